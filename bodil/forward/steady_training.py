"""Training and evaluation of the steady diffusion surrogate (Toledo-Marín et al. 2021, "Deep learning
approaches to surrogates for solving the diffusion equation for mechanistic real-world simulations", sec. 2-3).

Loss (eq. 1-2): the mean over pixels ``i`` and samples ``beta`` of

    L_{i beta} = exp(-(1 - y_{i beta}) / w) |y_hat_{i beta} - y_{i beta}|^alpha,   alpha = 1 (MAE) or 2 (MSE),

which weighs pixels near the sources (``y`` near 1) more than the many pixels far from them (weight
``exp(-1 / w)`` at ``y = 0``). Adam over shuffled mini-batches; every epoch visits the training samples in an
order drawn from ``(seed, epoch)``, dropout keys come from the same pair.

Roll-back (sec. 2, eq. 3, Fig. 4): an epoch whose training loss exceeds ``C`` times the mean loss of the last
``m`` accepted epochs is rejected and the network, batch-norm and optimiser state go back to those after the
accepted epoch ``s`` accepted epochs before the last one (``C = 5, m = 20, s = 5`` in the paper); training then
continues with the next epoch's batches. After every epoch a checkpoint is written (the state and the full
history) to ``out + ".checkpoints/"``; ``resume=True`` continues from the newest one and gives the same result
as an uninterrupted run. The weights file holds the accepted epoch with the lowest validation loss.

Metrics (sec. 3, Fig. 6d, 9-11, Table 2): the mean, 99th percentile and maximum of ``|y_hat - y|`` over all
pixels of a split; its mean and standard deviation per slice of true values ``[0.1 (k - 1), 0.1 k]``; and the
densities of predicted and true values.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import shutil
import time
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..io import InputError, write_json
from ..progress import ProgressMeter, as_meter
from .steady import load_steady_split
from .steady_network import SteadyArchitecture, SteadySurrogate, apply_batch, build_steady, infer
from .storage import settings_record
from .training import restore_checkpoint, write_checkpoint

LOSSES = {"mae": 1, "mse": 2}
"""Loss name -> exponent ``alpha`` of eq. 1."""


@dataclasses.dataclass(frozen=True)
class SteadyTrainSettings:
    """How a steady surrogate is trained.

    Attributes:
        epochs: epochs, rejected ones included (the paper: 800).
        batch_size, learning_rate: Adam's mini-batches and step size.
        loss: "mae" or "mse" (``alpha`` = 1 or 2); weight: ``w`` of eq. 1.
        p1, p2, dropout, width_scale, output_norm: the network (``SteadyArchitecture``; default the paper's
            model 9).
        rollback: reject jumping epochs (``rollback_factor`` C, ``rollback_window`` m, ``rollback_steps`` s),
            at most ``max_rollbacks`` times.
        seed: an integer or a ``jax.random`` key (initialisation, batch order, dropout).
        max_train, max_val: use only the first samples of the training / validation split.
    """

    epochs: int = 50
    batch_size: int = 16
    learning_rate: float = 1e-3
    loss: str = "mae"
    weight: float = 100.0
    p1: float = 1.0
    p2: float = 1.0
    dropout: tuple[float, ...] = (0.4, 0.4, 0.1, 0.1)
    width_scale: float = 1.0
    output_norm: bool = True
    rollback: bool = True
    rollback_factor: float = 5.0
    rollback_window: int = 20
    rollback_steps: int = 5
    max_rollbacks: int = 100
    seed: int | jax.Array = 0
    max_train: int | None = None
    max_val: int | None = None

    def __post_init__(self):
        where = "SteadyTrainSettings"
        for name, low in (("epochs", 1), ("batch_size", 1), ("rollback_window", 1), ("rollback_steps", 0),
                          ("max_rollbacks", 0)):
            object.__setattr__(self, name, _checks.integer(where, name, getattr(self, name), low=low))
        for name in ("learning_rate", "weight", "rollback_factor"):
            object.__setattr__(self, name, _checks.positive(where, name, getattr(self, name)))
        _checks.choice(where, "loss", self.loss, tuple(LOSSES))
        object.__setattr__(self, "dropout", tuple(float(d) for d in self.dropout))
        if not _checks.is_key(self.seed):
            object.__setattr__(self, "seed", _checks.integer(where, "seed", self.seed))
        for name in ("max_train", "max_val"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _checks.integer(where, name, getattr(self, name), low=1))
        self.architecture(100)  # checks p1, p2, dropout and width_scale now

    def architecture(self, size: int) -> SteadyArchitecture:
        return SteadyArchitecture(size=size, p1=self.p1, p2=self.p2, dropout=self.dropout,
                                  width_scale=self.width_scale, output_norm=self.output_norm)


def weighted_loss(pred, true, weight: float = 100.0, alpha: int = 1):
    """Eq. 1-2: ``mean(exp(-(1 - y) / w) |y_hat - y|^alpha)`` over all pixels and samples."""
    return jnp.mean(jnp.exp(-(1.0 - true) / weight) * jnp.abs(pred - true) ** alpha)


# ------------------------------------------------------------------------------------------------ roll-back
def rollback_target(history: Sequence[dict], loss: float, settings: SteadyTrainSettings) -> int | None:
    """The accepted epoch to go back to when an epoch with training ``loss`` follows ``history``, or ``None``
    to accept it: ``loss > C * mean(last m accepted losses)`` rolls back to the accepted epoch ``s`` accepted
    epochs before the last (the first accepted one if there are fewer)."""
    accepted = [h for h in history if h["accepted"]]
    used = sum(1 for h in history if not h["accepted"])
    if not (settings.rollback and accepted and used < settings.max_rollbacks):
        return None
    window = [h["train_loss"] for h in accepted[-settings.rollback_window:]]
    if not np.isfinite(loss) or loss > settings.rollback_factor * float(np.mean(window)):
        return accepted[max(0, len(accepted) - 1 - settings.rollback_steps)]["epoch"]
    return None


def _epoch_file(folder: str, epoch: int) -> str:
    return os.path.join(folder, f"epoch-{epoch:05d}.eqx")


def _prune(folder: str, history: Sequence[dict], settings: SteadyTrainSettings) -> None:
    """Keep the checkpoints that a roll-back, the best epoch or a resume may need."""
    accepted = [h for h in history if h["accepted"]]
    keep = {h["epoch"] for h in accepted[-(settings.rollback_steps + 1):]} | {history[-1]["epoch"]}
    if accepted:
        keep.add(min(accepted, key=lambda h: h["val_loss"])["epoch"])
    for file in glob.glob(os.path.join(folder, "epoch-*.eqx")):
        if int(os.path.basename(file)[6:11]) not in keep:
            os.remove(file)


def fit_with_rollback(state, run_epoch: Callable, validate: Callable, folder, fingerprint: dict,
                      settings: SteadyTrainSettings, *, resume: bool = False,
                      progress: bool | ProgressMeter = False) -> tuple[object, list[dict]]:
    """The epoch loop with roll-back and checkpoints, for any state pytree.

    ``run_epoch(state, epoch) -> (state, train_loss)`` trains one epoch (0-based); ``validate(state) -> dict``
    returns at least ``val_loss``. Checkpoints go to folder ``folder`` (one file per epoch, pruned to those a
    roll-back, the best epoch or a resume needs; ``bodil.forward.training.write_checkpoint``).

    Returns ``(best state, history)``: one dict per epoch with ``epoch`` (1-based), ``train_loss``,
    ``accepted``, ``wall_s``, and for accepted epochs the validation entries, for rejected ones
    ``rolled_back_to``. Raises ``InputError`` for checkpoints without ``resume`` or of other settings.
    """
    folder = os.fspath(folder)
    files = sorted(glob.glob(os.path.join(folder, "epoch-*.eqx")))
    history: list[dict] = []
    if files and not resume:
        raise InputError(f"{folder} holds checkpoints of an interrupted training; pass resume=True (--resume) to "
                         f"continue it or delete the folder.")
    if files:
        state, history = restore_checkpoint(files[-1], True, fingerprint, state)
    os.makedirs(folder, exist_ok=True)
    with as_meter(progress).session("steady training", total=settings.epochs, unit="epoch",
                                    initial=len(history)) as bar:
        for epoch in range(len(history), settings.epochs):
            t0 = time.perf_counter()
            new, loss = run_epoch(state, epoch)
            row = {"epoch": epoch + 1, "train_loss": float(loss)}
            target = rollback_target(history, row["train_loss"], settings)
            if target is None:
                state = new
                row.update(accepted=True, **validate(state))
            else:
                state, _ = restore_checkpoint(_epoch_file(folder, target), True, fingerprint, state)
                row.update(accepted=False, rolled_back_to=target)
            row["wall_s"] = time.perf_counter() - t0
            history.append(row)
            write_checkpoint(_epoch_file(folder, epoch + 1), fingerprint, history, state)
            _prune(folder, history, settings)
            bar.step(train_loss=row["train_loss"], val_loss=row.get("val_loss", float("nan")))
    accepted = [h for h in history if h["accepted"]]
    best = min(accepted, key=lambda h: h["val_loss"])["epoch"]
    state, _ = restore_checkpoint(_epoch_file(folder, best), True, fingerprint, state)
    return state, history


# ------------------------------------------------------------------------------------------------ metrics
def predict_in_batches(model: SteadySurrogate, x, batch_size: int = 64) -> np.ndarray:
    """``model.predict`` over ``x (N, n, n)`` in batches (float64 numpy)."""
    return np.concatenate([np.asarray(model.predict(x[i:i + batch_size]), np.float64)
                           for i in range(0, len(x), batch_size)])


def steady_metrics(pred, true, slices: int = 10) -> dict:
    """Toledo-Marín et al. (2021) statistics of ``r = |y_hat - y|`` over all pixels of all samples:
    ``residual_mean``, ``residual_p99``, ``residual_max``; per slice of true values ``[(k - 1) / slices,
    k / slices]`` (the last closed): ``slice_mean``, ``slice_sd``, ``slice_count`` (lists)."""
    p, t = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"steady_metrics: prediction and truth differ in size ({p.size} and {t.size}).")
    r = np.abs(p - t)
    k = np.clip(np.floor(t * slices).astype(int), 0, slices - 1)
    count = np.bincount(k, minlength=slices)
    total = np.bincount(k, r, minlength=slices)
    square = np.bincount(k, r * r, minlength=slices)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    sd = np.sqrt(np.maximum(np.where(count > 0, square / np.maximum(count, 1), np.nan) - mean ** 2, 0.0))
    return {"residual_mean": float(r.mean()), "residual_p99": float(np.percentile(r, 99)),
            "residual_max": float(r.max()), "slice_mean": mean.tolist(), "slice_sd": sd.tolist(),
            "slice_count": count.tolist()}


def evaluate_steady(model: SteadySurrogate, data, split: str = "test", *, limit: int | None = None) -> dict:
    """``steady_metrics`` of ``model`` on ``split`` of the dataset in folder ``data``; ``InputError`` if the
    weights were trained for another lattice size."""
    part = load_steady_split(data, split, limit=limit)
    size = part.manifest["settings"]["size"]
    if size != model.architecture.size:
        raise InputError(f"evaluate_steady: the weights are for a {model.architecture.size} x "
                         f"{model.architecture.size} lattice, the dataset in {data} has {size} x {size}.")
    return steady_metrics(predict_in_batches(model, part.x), part.y)


def plot_history(history: Sequence[dict], path) -> str:
    """Training and validation loss per epoch (log scale), rejected epochs marked (Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    acc = [h for h in history if h["accepted"]]
    rej = [h for h in history if not h["accepted"]]
    ax.semilogy([h["epoch"] for h in acc], [h["train_loss"] for h in acc], label="training loss (eq. 2)")
    ax.semilogy([h["epoch"] for h in acc], [h["val_loss"] for h in acc], label="validation loss")
    if rej:
        ax.semilogy([h["epoch"] for h in rej], [h["train_loss"] for h in rej], "rx", label="rolled back")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


def plot_evaluation(pred, true, metrics: dict, path) -> str:
    """Predicted vs true value densities (Fig. 11) and residual mean +- sd per value slice (Fig. 9)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    bins = np.linspace(0, 1, 51)
    a.hist(np.ravel(true), bins, density=True, histtype="step", label="true")
    a.hist(np.ravel(pred), bins, density=True, histtype="step", label="surrogate")
    a.set_yscale("log")
    a.set_xlabel("field value")
    a.legend()
    k = np.arange(1, len(metrics["slice_mean"]) + 1)
    m, s = np.asarray(metrics["slice_mean"]), np.asarray(metrics["slice_sd"])
    b.plot(k, m, "o-")
    b.fill_between(k, m - s, m + s, alpha=0.3)
    b.set_xlabel("slice k: true value in [0.1 (k - 1), 0.1 k]")
    b.set_ylabel("|residual|")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


# ------------------------------------------------------------------------------------------------ training
def _fingerprint(settings: SteadyTrainSettings, manifest: dict) -> dict:
    record = settings_record(settings)
    if not isinstance(settings.seed, int):
        record["seed"] = _checks.seed_words("train_steady", settings.seed)
    return {"settings": record, "dataset": manifest["settings"]}


@functools.lru_cache(maxsize=8)
def _compile(learning_rate: float, loss: str, weight: float):
    """``(optimiser, step)``, cached so that trainings with the same settings share compiled code."""
    import optax

    optimiser = optax.adam(learning_rate)
    alpha = LOSSES[loss]

    def loss_fn(net, bn, x, y, key):
        pred, bn = apply_batch(net, bn, x, key)
        return weighted_loss(pred, y, weight, alpha), bn

    @eqx.filter_jit
    def step(state, x, y, key):
        net, bn, opt_state = state
        (loss, bn), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(net, bn, x, y, key)
        updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(net, eqx.is_array))
        return (eqx.apply_updates(net, updates), bn, opt_state), loss

    return optimiser, step


def train_steady(data, out, settings: SteadyTrainSettings = SteadyTrainSettings(), *, resume: bool = False,
                 progress: bool | ProgressMeter = True) -> SteadySurrogate:
    """Train a steady surrogate on the dataset in folder ``data`` (``bodil.forward.steady``) and write the
    weights of its best epoch to ``out`` (``load_steady`` reads them), with ``out`` + ``.history.png``.

    Checkpoints go to ``out + ".checkpoints/"`` and are removed on success; ``resume=True`` continues an
    interrupted training (same settings and dataset). The returned model's ``info`` holds the dataset and
    settings, the history, the wall time and the test-split metrics (``steady_metrics``).

    Raises ``InputError`` for a missing, incomplete or damaged dataset, fewer training samples than one batch,
    or checkpoints without ``resume`` or of other settings.
    """
    meter = as_meter(progress)
    train = load_steady_split(data, "train", limit=settings.max_train)
    val = load_steady_split(data, "val", limit=settings.max_val)
    if len(train.x) < settings.batch_size:
        raise InputError(f"train_steady: {len(train.x)} training samples are fewer than one batch of "
                         f"{settings.batch_size}.")
    arch = settings.architecture(train.x.shape[-1])
    optimiser, step = _compile(settings.learning_rate, settings.loss, settings.weight)
    key = _checks.as_key("train_steady", settings.seed)
    net, bn = build_steady(arch, key)
    state = (net, bn, optimiser.init(eqx.filter(net, eqx.is_array)))
    words = _checks.seed_words("train_steady", settings.seed)
    bs = settings.batch_size

    def run_epoch(state, epoch):
        order = np.random.default_rng([*words, epoch]).permutation(len(train.x))
        batches = [order[i:i + bs] for i in range(0, len(order) - bs + 1, bs)]
        epoch_key = jax.random.fold_in(key, epoch + 1)
        losses = []
        for b, idx in enumerate(meter.track(batches, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch")):
            state, loss = step(state, jnp.asarray(train.x[idx]), jnp.asarray(train.y[idx]),
                               jax.random.fold_in(epoch_key, b))
            losses.append(float(loss))
        return state, float(np.mean(losses))

    def validate(state):
        pred = np.concatenate([np.asarray(infer(state[0], state[1], jnp.asarray(val.x[i:i + 64])))
                               for i in range(0, len(val.x), 64)])
        loss = float(weighted_loss(pred, val.y, settings.weight, LOSSES[settings.loss]))
        return {"val_loss": loss, "val_residual_mean": float(np.abs(pred - val.y).mean())}

    fingerprint = _fingerprint(settings, train.manifest)
    folder = os.fspath(out) + ".checkpoints"
    state, history = fit_with_rollback(state, run_epoch, validate, folder, fingerprint, settings, resume=resume,
                                       progress=meter)
    info = {"dataset": {"path": os.path.abspath(os.fspath(data)), **train.manifest["settings"],
                        "n_train_used": len(train.x), "n_val_used": len(val.x)},
            "training": fingerprint["settings"], "history": history,
            "wall_s": float(sum(h["wall_s"] for h in history)),
            "rollbacks": sum(1 for h in history if not h["accepted"])}
    model = SteadySurrogate(state[0], state[1], arch, info)
    test = load_steady_split(data, "test") if train.manifest["settings"]["n_test"] else val
    pred = predict_in_batches(model, test.x)
    info["test_metrics"] = steady_metrics(pred, test.y)
    model.save(out)
    plot_history(history, os.fspath(out) + ".history.png")
    write_json(os.fspath(out) + ".metrics.json", info["test_metrics"])
    shutil.rmtree(folder, ignore_errors=True)
    return model


__all__: Sequence[str] = ["LOSSES", "SteadyTrainSettings", "evaluate_steady", "fit_with_rollback", "plot_evaluation",
                          "plot_history", "predict_in_batches", "rollback_target", "steady_metrics", "train_steady",
                          "weighted_loss"]
