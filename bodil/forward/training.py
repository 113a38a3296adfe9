"""Training of the surrogate networks (``bodil.forward.network``) on a dataset of ``bodil.forward.dataset``.

Adam on the mean squared error of ``u`` (forward network) or of ``theta`` normalised to ``[-1, 1]`` (inverse
encoder), with the learning rate cosine-decayed from ``learning_rate`` to 1 % of it over all steps. Every
epoch visits the training samples in a random order drawn from ``(seed, epoch)`` in whole batches (the last
incomplete batch is left out), then computes the validation metrics (``bodil.forward.metrics`` for the
forward network, the MSE of normalised ``theta`` for the encoder) and writes a checkpoint.

The normalisation box is ``mu_D`` and ``mu_rho`` as drawn in the dataset and the origin offsets within the
largest training offset rounded up to whole mm, the same on every axis.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..io import InputError, atomic_path
from ..progress import ProgressMeter, as_meter
from .storage import Split, load_manifest, load_split, settings_record
from .model import Surrogate, to_unit
from .network import KINDS, Architecture, build


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How a network is trained.

    Attributes:
        kind: "forward" (the U-Net) or "inverse" (the encoder).
        epochs: passes over the training split.
        batch_size: samples per step.
        learning_rate: Adam's initial learning rate (cosine-decayed to 1 % of it).
        width: first-stage width ``C`` of the network.
        depths: blocks per encoder stage.
        seed: an integer or a ``jax.random`` key; it initialises the network and orders the batches.
        max_train, max_val: use only the first samples of the training / validation split (None: all).
    """

    kind: str = "forward"
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    width: int = 16
    depths: tuple[int, ...] = (1, 1, 2, 2)
    seed: int | jax.Array = 0
    max_train: int | None = None
    max_val: int | None = None

    def __post_init__(self):
        where = "TrainSettings"
        _checks.choice(where, "kind", self.kind, KINDS)
        for name in ("epochs", "batch_size", "width"):
            object.__setattr__(self, name, _checks.integer(where, name, getattr(self, name), low=1))
        object.__setattr__(self, "learning_rate", _checks.positive(where, "learning_rate", self.learning_rate))
        object.__setattr__(self, "depths", tuple(_checks.integer(where, "depths", d, low=1) for d in self.depths))
        if not _checks.is_key(self.seed):
            object.__setattr__(self, "seed", _checks.integer(where, "seed", self.seed))
        for name in ("max_train", "max_val"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _checks.integer(where, name, getattr(self, name), low=1))


@dataclasses.dataclass(frozen=True, eq=False)
class _Run:
    """What one training works on: the dataset's splits, the network's architecture and normalisation box, and
    the fingerprint a checkpoint must match."""

    manifest: dict
    train: Split
    val: Split
    arch: Architecture
    lo: np.ndarray
    hi: np.ndarray
    spacing: float
    fingerprint: dict

    def model(self, network, info: dict | None = None) -> Surrogate:
        return Surrogate(network=network, architecture=self.arch, theta_lower=self.lo, theta_upper=self.hi,
                         spacing_mm=self.spacing, info={} if info is None else info)

    def arrays(self, split: Split, idx):
        """``(normalised theta, tissue, u)`` of samples ``idx`` as float32 JAX arrays."""
        return (jnp.asarray(to_unit(split.theta[idx], self.lo, self.hi), jnp.float32),
                jnp.asarray(split.tissue[idx], jnp.float32), jnp.asarray(split.u[idx], jnp.float32))


def _theta_box(train_theta: np.ndarray, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """Normalisation ranges: ``mu_D``, ``mu_rho`` as drawn; offsets symmetric, the largest training offset
    rounded up to whole mm."""
    ranges = manifest["theta_ranges"]
    reach = float(np.ceil(np.abs(train_theta[:, :3]).max()))
    lo = np.array([-reach, -reach, -reach, ranges["mu_d"][0], ranges["mu_rho"][0]])
    hi = np.array([reach, reach, reach, ranges["mu_d"][1], ranges["mu_rho"][1]])
    return lo, hi


def _open_run(data, settings: TrainSettings) -> _Run:
    """Load the dataset in folder ``data`` and fix what the training needs from it."""
    manifest = load_manifest(data)
    train = load_split(data, "train", limit=settings.max_train)
    val = load_split(data, "val", limit=settings.max_val)
    if len(train) < settings.batch_size:
        raise InputError(f"train_surrogate: {len(train)} training samples are fewer than one batch of "
                         f"{settings.batch_size}.")
    arch = Architecture(kind=settings.kind, width=settings.width, depths=settings.depths, size=train.u.shape[-1])
    lo, hi = _theta_box(train.theta, manifest)
    record = settings_record(settings)
    if not isinstance(settings.seed, int):
        record["seed"] = _checks.seed_words("train_surrogate", settings.seed)
    fingerprint = {"settings": record, "dataset": {k: manifest[k] for k in ("settings", "tissue_sha256")}}
    return _Run(manifest=manifest, train=train, val=val, arch=arch, lo=lo, hi=hi,
                spacing=float(manifest["settings"]["spacing_mm"]), fingerprint=fingerprint)


def _compile(run: _Run, optimiser):
    """``step(net, opt_state, theta_z, tissue, u) -> (net, opt_state, loss)`` and ``evaluate(net, theta_z,
    tissue, u) -> prediction`` (``u`` for the forward network, normalised ``theta`` for the encoder)."""

    def predict(net, theta_z, tissue, u):
        if run.arch.kind == "forward":
            return jax.vmap(run.model(net).apply)(theta_z, tissue)
        return jax.vmap(net)(u, tissue)

    def loss_fn(net, theta_z, tissue, u):
        target = u if run.arch.kind == "forward" else theta_z
        return jnp.mean((predict(net, theta_z, tissue, u) - target) ** 2)

    @eqx.filter_jit
    def step(net, opt_state, theta_z, tissue, u):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(net, theta_z, tissue, u)
        updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(net, eqx.is_array))
        return eqx.apply_updates(net, updates), opt_state, loss

    return step, eqx.filter_jit(predict)


def restore_checkpoint(ckpt: str, resume: bool, fingerprint: dict, state):
    """``(state, history)`` from the checkpoint ``ckpt`` when it exists (``resume`` must be set and the
    fingerprint must match), else ``(state, [])``."""
    if not os.path.exists(ckpt):
        return state, []
    if not resume:
        raise InputError(f"{ckpt} exists (an interrupted training); pass --resume to continue it or delete it.")
    with open(ckpt, "rb") as f:
        saved = json.loads(f.readline().decode())
        if saved["fingerprint"] != json.loads(json.dumps(fingerprint)):
            raise InputError(f"{ckpt} was made with other settings or data; delete it or train with the same.")
        state = eqx.tree_deserialise_leaves(f, state)
    return state, saved["history"]


def write_checkpoint(ckpt: str, fingerprint: dict, history: list[dict], state) -> None:
    """Write ``state`` (a pytree) atomically to ``ckpt``: a JSON line with ``fingerprint`` and ``history``, then
    ``equinox.tree_serialise_leaves`` (``restore_checkpoint`` reads it)."""
    with atomic_path(ckpt, ".checkpoint") as tmp, open(tmp, "wb") as f:
        f.write((json.dumps({"fingerprint": fingerprint, "history": history}) + "\n").encode())
        eqx.tree_serialise_leaves(f, state)


def _train_epoch(step, state, run: _Run, settings: TrainSettings, epoch: int, meter: ProgressMeter):
    """One pass over the training split in whole batches: ``(state, mean loss)``."""
    network, opt_state = state
    rng = np.random.default_rng([*_checks.seed_words("train_surrogate", settings.seed), epoch])
    order = rng.permutation(len(run.train))
    batches = [order[i:i + settings.batch_size]
               for i in range(0, len(run.train) - settings.batch_size + 1, settings.batch_size)]
    losses = []
    for idx in meter.track(batches, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch"):
        network, opt_state, loss = step(network, opt_state, *run.arrays(run.train, idx))
        losses.append(float(loss))
    return (network, opt_state), float(np.mean(losses))


def _validate(evaluate, network, run: _Run, batch_size: int) -> dict:
    """Validation metrics: ``val_<metric>`` of ``bodil.forward.metrics`` (forward) or ``val_mse`` of the
    normalised theta (inverse), averaged over the validation split."""
    from . import metrics

    val = run.val
    preds = [np.asarray(evaluate(network, *run.arrays(val, np.arange(i, min(i + batch_size, len(val))))))
             for i in range(0, len(val), batch_size)]
    pred = np.concatenate(preds)
    if run.arch.kind == "forward":
        table = metrics.field_metrics(pred, np.asarray(val.u, np.float64))
        return {f"val_{k}": float(np.mean(v)) for k, v in table.items()}
    return {"val_mse": float(np.mean((pred - to_unit(val.theta, run.lo, run.hi)) ** 2))}


def _info(run: _Run, history: list[dict]) -> dict:
    """What the weights file records about its training: dataset, settings, history and wall time."""
    dataset = {"anatomy": run.manifest["anatomy"], "size": run.arch.size, "spacing_mm": run.spacing,
               "n_train": len(run.train), "n_val": len(run.val), "seed": run.manifest["settings"]["seed"]}
    return {"dataset": dataset, "training": run.fingerprint["settings"], "history": history,
            "wall_s": float(sum(h["wall_s"] for h in history))}


def train_surrogate(data, out, settings: TrainSettings = TrainSettings(), *, resume: bool = False,
                    progress: bool | ProgressMeter = True) -> list[dict]:
    """Train a forward surrogate or an inverse encoder on the dataset in folder ``data``; write ``out``.

    After every epoch the validation metrics are computed and a checkpoint (network, optimiser state, epoch,
    history) is written atomically to ``out + ".checkpoint"``; ``resume=True`` continues from it (same
    settings and dataset). On success ``out`` holds the weights of the last epoch and the checkpoint is removed.

    Args:
        data: folder of a complete dataset (``bodil.forward.dataset.generate_dataset``).
        out: the weights file to write (``bodil.forward.model.load`` reads it).
        settings: what to train and how (``TrainSettings``).
        resume: continue from ``out + ".checkpoint"``; without it an existing checkpoint is an error.
        progress: ``True`` for progress bars (epochs, batches; the epoch bar shows the losses), ``False`` for
            none, or a ``bodil.progress`` meter.

    Returns:
        The history: one dict per epoch with ``epoch``, ``train_loss``, ``val_mse`` (and for the forward
        network the other metrics of ``bodil.forward.metrics``) and ``wall_s``.

    Raises:
        InputError: the dataset is missing, incomplete or smaller than one batch, or a checkpoint exists
            without ``resume`` or was made with other settings or data.
    """
    import optax

    meter = as_meter(progress)
    run = _open_run(data, settings)
    n_batches = len(run.train) // settings.batch_size
    schedule = optax.cosine_decay_schedule(settings.learning_rate, settings.epochs * n_batches, alpha=0.01)
    optimiser = optax.adam(schedule)
    network = build(run.arch, _checks.as_key("train_surrogate", settings.seed))
    ckpt = os.fspath(out) + ".checkpoint"
    state, history = restore_checkpoint(ckpt, resume, run.fingerprint,
                              (network, optimiser.init(eqx.filter(network, eqx.is_array))))
    step, evaluate = _compile(run, optimiser)
    with meter.session(f"training ({settings.kind})", total=settings.epochs, unit="epoch",
                       initial=len(history)) as bar:
        for epoch in range(len(history), settings.epochs):
            t0 = time.perf_counter()
            state, loss = _train_epoch(step, state, run, settings, epoch, meter)
            row = {"epoch": epoch + 1, "train_loss": loss, **_validate(evaluate, state[0], run, settings.batch_size)}
            row["wall_s"] = time.perf_counter() - t0
            history.append(row)
            write_checkpoint(ckpt, run.fingerprint, history, state)
            bar.step(train_loss=row["train_loss"], val_mse=row["val_mse"])
    run.model(state[0], _info(run, history)).save(out)
    if os.path.exists(ckpt):
        os.remove(ckpt)
    return history


__all__: Sequence[str] = ["TrainSettings", "restore_checkpoint", "train_surrogate", "write_checkpoint"]
