"""The steady diffusion surrogate (Toledo-Marín et al. 2021): solver, dataset, networks, loss, roll-back, resume
and bad input."""

import json
import math
import os

import equinox as eqx
import jax
import numpy as np
import pytest

from bodil.forward import steady as S
from bodil.forward import steady_network as N
from bodil.forward import steady_training as T
from bodil.io import InputError
from bodil.progress import NoProgress

SMALL = 24  # lattice of the fast tests (discs of radius 3)


def small_geometry(seed=3):
    return S.sample_geometry(seed, size=32, radius=3.0)


def test_direct_solve_matches_time_integration_to_steady_state():
    g = small_geometry()
    direct = S.steady_state(g)
    explicit, steps = S.relax_to_steady(g, tol=1e-11)
    implicit, _ = S.relax_to_steady(g, method="implicit", tol=1e-11)
    # the slowest mode decays at gamma + D (2 - 2 cos(pi / 31)) * 2 ~ 0.023: residual 1e-11 -> error < 1e-9
    assert steps > 100 and np.abs(explicit - direct).max() < 1e-8 and np.abs(implicit - direct).max() < 1e-8
    masks = S.disc_masks(g)
    assert np.allclose(direct[masks[0]], g.values[0]) and np.allclose(direct[masks[1]], g.values[1])
    assert np.all(direct[[0, -1], :] == 0) and np.all(direct[:, [0, -1]] == 0)
    assert np.abs(S.steady_residual(direct, g)).max() < 1e-12
    assert 0 < direct[~masks.any(0)].max() < 1 and direct.min() >= 0  # maximum principle


def test_operator_on_a_discrete_eigenfunction_and_under_transposition():
    n = 32
    g = small_geometry()
    i = np.arange(n)
    a = math.pi / (n - 1)
    c = np.outer(np.sin(a * i), np.sin(2 * a * i))  # zero on the ring, a discrete eigenfunction of lap
    lam = S.DIFFUSIVITY * (2 * math.cos(a) + 2 * math.cos(2 * a) - 4) - S.DECAY
    free = S.free_pixels(g)
    assert np.abs(S.steady_residual(c, g) - np.where(free, lam * c, 0.0)).max() < 1e-13
    # swapping rows and columns of the geometry transposes the field (no axis is treated differently)
    gt = S.Geometry(g.centres[:, ::-1], g.values, g.size, g.radius)
    assert np.abs(S.steady_state(gt) - S.steady_state(g).T).max() < 1e-12
    # one factorisation serves any source values (the field is linear in them)
    solver = S.SteadySolver(g)
    assert np.abs(solver.solve([0.3, 0.7]) - (0.3 * solver.unit_fields[0] + 0.7 * solver.unit_fields[1])).max() == 0


def test_geometry_sampling_is_reproducible_and_refuses_bad_discs():
    a, b = S.sample_geometry(7), S.sample_geometry(7)
    assert np.array_equal(a.centres, b.centres) and np.array_equal(a.values, b.values)
    assert not np.array_equal(a.centres, S.sample_geometry(8).centres)
    assert np.array_equal(S.sample_geometry(jax.random.key(1)).centres, S.sample_geometry(jax.random.key(1)).centres)
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = S.sample_geometry(rng)
        assert g.values[0] == 1 and 0 < g.values[1] <= 1
        assert np.hypot(*(g.centres[0] - g.centres[1])) > 2 * g.radius
        assert g.centres.min() >= 1 + g.radius and g.centres.max() <= g.size - 2 - g.radius
        masks = S.disc_masks(g)
        assert masks.sum(axis=(1, 2)).min() >= 69 and not (masks[0] & masks[1]).any()  # pi 5^2 ~ 78 pixels
    with pytest.raises(InputError, match="outside the domain"):
        S.check_geometry(S.Geometry(np.array([[3.0, 50.0], [50.0, 50.0]]), np.array([1.0, 0.5])))
    with pytest.raises(InputError, match="overlap"):
        S.steady_state(S.Geometry(np.array([[30.0, 30.0], [30.0, 38.0]]), np.array([1.0, 0.5])))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("steady") / "data"
    settings = S.SteadyDatasetSettings(size=SMALL, radius=3.0, n_train=8, n_val=4, n_test=4, shard_size=4)
    manifest = S.generate_steady_dataset(out, settings, progress=False)
    return out, settings, manifest


def test_dataset_holds_solved_samples_and_resumes_to_the_same_files(dataset, tmp_path):
    out, settings, manifest = dataset
    test = S.load_steady_split(out, "test")
    assert test.x.shape == (4, SMALL, SMALL) and test.y.dtype == np.float32
    g = S.Geometry(test.centres[0], test.values[0], SMALL, 3.0)
    assert np.abs(test.y[0] - S.steady_state(g)).max() < 1e-6
    assert np.array_equal(test.x[0], S.source_image(g).astype(np.float32))
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in manifest["shards"]:
        if name != "train-00001.npz":
            (copy / name).write_bytes((out / name).read_bytes())
    partial = json.loads((out / "manifest.json").read_text())
    partial["complete"] = False
    del partial["shards"]["train-00001.npz"]
    (copy / "manifest.json").write_text(json.dumps(partial))
    with pytest.raises(InputError, match="incomplete"):
        S.load_steady_split(copy, "train")
    with pytest.raises(InputError, match="resume"):
        S.generate_steady_dataset(copy, settings, progress=False)
    with pytest.raises(InputError, match="different 'settings'"):
        S.generate_steady_dataset(copy, S.SteadyDatasetSettings(size=SMALL, radius=3.0, n_train=9), resume=True,
                                  progress=False)
    again = S.generate_steady_dataset(copy, settings, resume=True, progress=False)
    assert again["shards"] == manifest["shards"]
    (copy / "val-00000.npz").write_bytes(b"damaged")
    with pytest.raises(InputError, match="does not match the manifest"):
        S.load_steady_split(copy, "val")
    os.remove(copy / "manifest.json")
    with pytest.raises(InputError, match="bodil dataset-steady"):
        S.load_steady_split(copy, "val")


def test_networks_have_the_papers_shapes_and_channels():
    arch = N.SteadyArchitecture()
    net, state = N.steady_shapes(arch)
    assert [c.weight.shape[:2] for c in net.nn1.convs] == [(4, 1), (8, 4), (16, 8), (8, 16), (4, 8), (1, 4)]
    assert [c.weight.shape[0] for c in net.nn2.encoder] == [64, 128, 256, 512, 1024]
    assert net.nn2.bottom.weight.shape == (2048, 1024, 3, 3)
    # decoder image sides of Table 1: 1 -> 3 -> 7 -> 13 -> 25 -> 51 -> 100
    x = jax.ShapeDtypeStruct((2048, 1, 1), np.float32)
    sides = []
    for layer in [*net.nn2.decoder, net.nn2.head]:
        x = eqx.filter_eval_shape(lambda f, v: f(v), layer, x)
        sides.append((x.shape[0], x.shape[1]))
    assert sides == [(1024, 3), (512, 7), (256, 13), (128, 25), (64, 51), (1, 100)]
    assert 50e6 < N.count_parameters(net) < 51e6  # about 50 million, nearly all in NN2
    y = eqx.filter_eval_shape(lambda n, s, x: N.apply_batch(n, s, x)[0], net, state,
                              jax.ShapeDtypeStruct((3, 100, 100), np.float32))
    assert y.shape == (3, 100, 100)
    small = N.SteadyArchitecture(width_scale=0.125)
    assert small.nn2_channels() == [8, 16, 32, 64, 128, 256] and small.pooled_sizes() == [100, 50, 25, 12, 6, 3]
    with pytest.raises(ValueError, match="both 0"):
        N.SteadyArchitecture(p1=0, p2=0)
    shipped = N.pretrained_steady()  # what weights/README.md states about it
    assert shipped.architecture.size == 100 and shipped.architecture.p1 == 0 and shipped.network.nn1 is None
    assert shipped.info["test_metrics"]["residual_mean"] < 0.012 and shipped.info["dataset"]["n_train_used"] == 2000


def test_weighted_loss_is_equation_1_averaged():
    y = np.array([[0.0, 0.5], [1.0, 0.2]])
    p = np.array([[0.1, 0.3], [0.9, 0.6]])
    w = 2.0
    terms = [math.exp(-(1 - t) / w) * abs(q - t) for q, t in zip(p.ravel(), y.ravel())]
    assert abs(float(T.weighted_loss(p, y, w, 1)) - sum(terms) / 4) < 1e-7
    terms2 = [math.exp(-(1 - t) / w) * (q - t) ** 2 for q, t in zip(p.ravel(), y.ravel())]
    assert abs(float(T.weighted_loss(p, y, w, 2)) - sum(terms2) / 4) < 1e-7


def test_metrics_pool_pixels_and_slice_by_true_value():
    true = np.array([[0.05, 0.15, 0.95, 1.0]])
    pred = true + np.array([[0.01, -0.03, 0.2, 0.0]])
    m = T.steady_metrics(pred, true)
    assert abs(m["residual_mean"] - 0.06) < 1e-12 and abs(m["residual_max"] - 0.2) < 1e-12
    assert m["slice_count"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert abs(m["slice_mean"][9] - 0.1) < 1e-12 and abs(m["slice_sd"][9] - 0.1) < 1e-12
    assert math.isnan(m["slice_mean"][4])


def test_rollback_restores_the_weights_of_s_accepted_epochs_before(tmp_path):
    settings = T.SteadyTrainSettings(epochs=9, rollback_steps=2, rollback_window=3)

    def run_epoch(state, epoch):  # the weights move by epoch + 1; epoch 6 (0-based) jumps
        if epoch == 6:
            return {"w": state["w"] + 1000.0}, 1e3
        return {"w": state["w"] + epoch + 1.0}, 1.0 / (epoch + 1)

    validate = lambda state: {"val_loss": float(abs(state["w"] - 20.0))}  # noqa: E731
    state, history = T.fit_with_rollback({"w": np.float64(0.0)}, run_epoch, validate, tmp_path / "ck", {"a": 1},
                                         settings)
    assert [h["accepted"] for h in history] == [True] * 6 + [False, True, True]
    assert history[6]["rolled_back_to"] == 4  # the last accepted epoch is 6, two accepted before it: 4
    # weights after epoch 4 (1 + 2 + 3 + 4 = 10), then epochs 8 and 9 add 8 and 9: 27; best: |w - 20| smallest
    assert [h.get("val_loss") for h in history][7:] == [2.0, 7.0]
    assert float(state["w"]) == 21.0 and sorted(os.listdir(tmp_path / "ck"))[-1] == "epoch-00009.eqx"
    off = T.SteadyTrainSettings(epochs=9, rollback=False)
    _, history = T.fit_with_rollback({"w": np.float64(0.0)}, run_epoch, validate, tmp_path / "ck2", {}, off)
    assert all(h["accepted"] for h in history)
    assert T.rollback_target(history[:3], float("nan"), settings) == 1


class _Kill(NoProgress):
    """A meter that stops the training (like a kill) after ``after`` epochs were checkpointed."""

    def __init__(self, after):
        object.__setattr__(self, "after", after)

    def init(self, desc, total=None, unit="it", initial=0):
        return {"desc": desc, "n": initial}

    def step(self, state, n=1, **postfix):
        state["n"] += n
        if state["desc"] == "steady training" and state["n"] >= self.after:
            raise KeyboardInterrupt
        return state


def test_interrupted_training_resumes_to_the_same_weights_and_bad_weights_are_refused(dataset, tmp_path):
    data = dataset[0]
    settings = T.SteadyTrainSettings(epochs=2, batch_size=4, p2=0.0, dropout=(0.0, 0.0, 0.0, 0.0))
    whole = T.train_steady(data, tmp_path / "a.eqx", settings, progress=False)
    with pytest.raises(KeyboardInterrupt):
        T.train_steady(data, tmp_path / "b.eqx", settings, progress=_Kill(1))
    with pytest.raises(InputError, match="resume"):
        T.train_steady(data, tmp_path / "b.eqx", settings, progress=False)
    resumed = T.train_steady(data, tmp_path / "b.eqx", settings, progress=False, resume=True)
    leaves = lambda m: jax.tree.leaves(eqx.filter((m.network, m.state), eqx.is_array))  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(leaves(whole), leaves(resumed)))
    assert [h["train_loss"] for h in whole.info["history"]] == [h["train_loss"] for h in resumed.info["history"]]
    loaded = N.load_steady(tmp_path / "a.eqx")
    x = S.load_steady_split(data, "test").x
    assert np.array_equal(np.asarray(loaded.predict(x)), np.asarray(whole.predict(x)))
    assert whole.info["test_metrics"]["residual_mean"] > 0 and os.path.exists(tmp_path / "a.eqx.history.png")
    with pytest.raises(InputError, match="24 x 24 lattice"):
        loaded.predict(np.zeros((2, 100, 100)))
    with pytest.raises(InputError, match="not found"):
        N.load_steady(tmp_path / "missing.eqx")
    (tmp_path / "bad.eqx").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="not a bodil steady surrogate"):
        N.load_steady(tmp_path / "bad.eqx")
    raw = (tmp_path / "a.eqx").read_bytes()
    (tmp_path / "cut.eqx").write_bytes(raw[:len(raw) - 100])
    with pytest.raises(InputError, match="damaged"):
        N.load_steady(tmp_path / "cut.eqx")
    other = tmp_path / "other"
    S.generate_steady_dataset(other, S.SteadyDatasetSettings(size=20, radius=3.0, n_train=1, n_val=1, n_test=1),
                              progress=False)
    with pytest.raises(InputError, match="the dataset in .* has 20 x 20"):
        T.evaluate_steady(loaded, other)


def test_cli_writes_a_steady_dataset_and_reports_bad_input(tmp_path, capsys):
    from bodil.cli import main

    assert main(["dataset-steady", "--out", str(tmp_path / "d"), "--train", "2", "--val", "1", "--test", "1",
                 "--shard-size", "2"]) == 0
    assert S.load_steady_split(tmp_path / "d", "train").x.shape == (2, 100, 100)
    assert main(["train-steady", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "w.eqx")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
