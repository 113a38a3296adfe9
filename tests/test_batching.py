"""Batched forward runs (bodil.forward.fk.BatchedFK) against the serial solver, batch executors, and BASIS on the
tumour posterior's forward limit with batched evaluations against one at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodil.forward.fk import BatchedFK, fk_initial_condition, solve_fk
from bodil.inference.executors import BatchExecutor
from bodil.tumor import pipeline
from bodil.tumor.model import ORIGIN, tumor_model
from bodil.tumor.settings import CTVSettings

SHAPE, SPACING, TIMES = (9, 8, 7), (1.0, 1.5, 2.0), [0.0, 2.5, 6.0, 15.0]
# (Dw, Dg, rho): steps set by diffusion, by the reaction, by neither (one step per interval), no reaction
RATES = [(0.8, 0.1, 0.05), (0.1, 0.01, 0.3), (0.0, 0.0, 0.0), (2.0, 0.5, 0.0)]


@pytest.fixture(scope="module")
def tissue():
    rng = np.random.default_rng(0)
    wm = rng.uniform(0, 1, SHAPE)
    gm = (1 - wm) * rng.uniform(0, 1, SHAPE)
    wm[:3, :, :3] = gm[:3, :, :3] = 0.0  # a pocket of CSF: internal no-flux walls
    u0 = np.stack([np.asarray(fk_initial_condition(SHAPE, SPACING, (4.0 + i, 6.0, 7.0), mass=150.0, dt2=3.0))
                   for i in range(len(RATES))])
    return wm, gm, u0


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_a_vmapped_batch_of_different_rates_takes_the_serial_steps(tissue, dtype):
    wm, gm, u0 = tissue
    u0 = u0.astype(dtype)
    solver = BatchedFK(wm, gm, SPACING, TIMES, dtype=dtype)
    dw, dg, rho = (np.array(r) for r in zip(*RATES))
    steps = solver.steps(dw, dg, rho)
    assert len(set(steps.tolist())) == len(RATES) and steps[2] == 3  # different counts; 1 per interval > 0
    batch = np.asarray(solver(u0, dw, dg, rho))
    assert batch.shape == (len(RATES), len(TIMES), *SHAPE) and batch.dtype == dtype
    for i, (a, b, r) in enumerate(RATES):
        serial = np.asarray(solve_fk(u0[i], wm, gm, SPACING, dw=a, dg=b, rho=r, t_final=TIMES[-1], times=TIMES))
        # same steps and operations: equal to rounding (a different dt would differ by ~1e-3 here)
        np.testing.assert_allclose(batch[i], serial, rtol=1e-12 if dtype == jnp.float64 else 1e-5, atol=1e-14)
    vmapped = np.asarray(jax.vmap(solver.solve)(u0, dw, dg, rho))  # the per-member function vmaps to the same
    np.testing.assert_allclose(vmapped, batch, rtol=1e-12, atol=1e-14)
    one = np.asarray(solver.solve(u0[1], *RATES[1]))  # unbatched, the same
    np.testing.assert_allclose(one, batch[1], rtol=1e-12, atol=1e-14)
    assert np.abs(batch[0, -1] - u0[0]).max() > 0.05  # it did move


def test_too_many_steps_are_refused_on_the_host_and_give_nan_inside(tissue):
    wm, gm, u0 = tissue
    solver = BatchedFK(wm, gm, SPACING, TIMES, max_steps=20, final_only=True)
    with pytest.raises(ValueError, match="time steps needed"):
        solver(u0[:2], np.array([0.8, 5.0]), np.array([0.1, 0.5]), np.array([0.05, 0.05]))
    out = np.asarray(jax.vmap(solver.solve)(u0[:2], jnp.array([0.1, 5.0]), jnp.array([0.0, 0.5]), jnp.zeros(2)))
    assert out.shape == (2, *SHAPE) and np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))


def test_batch_executor_orders_by_cost_pads_and_returns_in_the_given_order():
    calls = []

    def fn(batch):
        calls.append(batch["a"].copy())
        return batch["a"] * 2.0, {"b": batch["a"][:, None] + np.zeros((1, 3))}

    thetas = [{"a": np.float64(v)} for v in (5.0, 1.0, 4.0, 2.0, 3.0, 0.5, 6.0)]
    out = BatchExecutor(4, cost=lambda t: float(t["a"]), pad=True).evaluate(fn, thetas)
    assert [float(r[0]) for r in out] == [2.0 * float(t["a"]) for t in thetas]
    assert [r[1]["b"].tolist() for r in out] == [[float(t["a"])] * 3 for t in thetas]
    # sorted chunks of at most 4, the last one padded to a power of two by repeating its last row
    assert [c.tolist() for c in calls] == [[0.5, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 6.0]]
    BatchExecutor(8, pad=4).evaluate(fn, thetas[:1])  # at least 4 rows: fewer shapes to compile
    assert calls[-1].tolist() == [5.0] * 4


@pytest.fixture(scope="module")
def tiny_fit():
    """A 10^3 tumour model (a ball of tissue, a tumour grown by its own forward run) and its truth as MAP."""
    n, side = 10, 50.0
    x = (np.arange(n) + 0.5) * side / n
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    brain = (X - 25) ** 2 + (Y - 25) ** 2 + (Z - 25) ** 2 < 23**2
    wm = np.where(brain, 0.6 + 0.3 * np.sin(X / 7.0), 0.0)
    gm = np.where(brain, 0.95 - wm, 0.0)
    theta = dict(Dw=0.5, ratio=10.0, rho=0.06, M=1500.0, x0=24.0, y0=27.0, z0=26.0, tau_lo=0.25, tau_up=0.675)
    seed = np.zeros((n,) * 3, np.int8)
    seed[5, 5, 5] = 2
    u = np.asarray(tumor_model(wm, gm, seed, side, nt=5).forward(theta)[-1])
    classes = np.where(u >= 0.675, 2, np.where(u >= 0.25, 1, 0)).astype(np.int8)
    model = tumor_model(wm, gm, classes, side, nt=5, likelihood="sigmoid")
    return pipeline.MapFit(None, model, theta)


def _sample(fit, batch_size, dtype="float64", thresholds="fixed", **kw):
    settings = CTVSettings(grid=10, time_points=5, num_samples=8, batch_size=batch_size, error_correlation_mm=25.0,
                           posterior_parameters=("rho", *ORIGIN), dtype=dtype, thresholds=thresholds)
    return pipeline.sample_posterior(fit, settings, **kw)  # float64: tests/conftest.py


@pytest.mark.xla_optimized
def test_basis_with_batched_forward_runs_gives_the_serial_samples_and_resumes(tiny_fit, tmp_path, monkeypatch):
    serial, mode = _sample(tiny_fit, 1)
    batched, batched_mode = _sample(tiny_fit, 4)
    # every evaluation went through the batches (their count includes the rows that pad a chunk)
    assert mode.evaluations <= batched_mode.evaluations < 1.2 * mode.evaluations and mode.evaluations > 8
    for name in ("rho", *ORIGIN, "field"):
        np.testing.assert_allclose(batched.posterior[name].values, serial.posterior[name].values, rtol=1e-9,
                                   atol=1e-7)
    np.testing.assert_allclose(batched.sample_stats["log_likelihood"].values,
                               serial.sample_stats["log_likelihood"].values, rtol=1e-10)
    # with the thresholds integrated out (the default), the batched nodes give the serial ones too
    serial_m, _ = _sample(tiny_fit, 1, thresholds="marginalised")
    batched_m, _ = _sample(tiny_fit, 4, thresholds="marginalised")
    for name in ("rho", *ORIGIN, "threshold_weights"):
        np.testing.assert_allclose(batched_m.posterior[name].values, serial_m.posterior[name].values, rtol=1e-6,
                                   atol=1e-7)
    # killed after a few sweeps, then resumed from its checkpoint: the same samples as uninterrupted
    path, batch, calls = str(tmp_path / "basis.pkl"), pipeline.ForwardLikelihood.batch, []

    def dying(self, thetas):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return batch(self, thetas)

    monkeypatch.setattr(pipeline.ForwardLikelihood, "batch", dying)
    with pytest.raises(KeyboardInterrupt):
        _sample(tiny_fit, 4, checkpoint=path)
    monkeypatch.setattr(pipeline.ForwardLikelihood, "batch", batch)
    resumed, _ = _sample(tiny_fit, 4, checkpoint=path, resume=True)
    for name in ("rho", *ORIGIN):
        np.testing.assert_array_equal(resumed.posterior[name].values, batched.posterior[name].values)


def test_float32_forward_runs_give_the_float64_posterior_to_rounding(tiny_fit):
    """``CTVSettings(dtype="float32")`` (``bodil ctv --dtype float32``) runs BASIS's forward runs in float32: the
    log-likelihoods move by rounding only (summed in float64, so not by nothing), and BASIS makes the same
    decisions, so the particles agree to float32 rounding. A dtype that did not reach the runs would leave the
    log-likelihoods identical; one that broke them would move them by far more than 1e-4."""
    ref, ref_mode = _sample(tiny_fit, 4)
    single, mode = _sample(tiny_fit, 4, dtype="float32")
    assert mode.dtype == jnp.float32 and ref_mode.dtype == jnp.float64
    a, b = ref.sample_stats["log_likelihood"].values, single.sample_stats["log_likelihood"].values
    diff = np.max(np.abs(a - b) / np.maximum(np.abs(a), 1.0))
    assert 0.0 < diff < 1e-4, diff
    for name in ("rho", *ORIGIN):
        np.testing.assert_allclose(single.posterior[name].values, ref.posterior[name].values, rtol=1e-4)
    with pytest.raises(ValueError, match="dtype"):
        CTVSettings(dtype="float16")
