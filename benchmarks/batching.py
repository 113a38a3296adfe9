"""Serial against batched evaluations of the tumour posterior's forward limit: time per particle.

For each box size the GliODIL model (``bodil.tumor.model.tumor_model``) is built on an analytic brain phantom
(a ball of white and grey matter in a ``1.5 x`` larger box) with a tumour grown by the model's own forward run,
and ``--particles`` parameter values are evaluated by ``ForwardLikelihood``, as BASIS's forward limit does:

* serial: ``ForwardLikelihood(theta)`` one after the other (``SerialExecutor``: ``solve_fk`` per particle,
  the time loop in Python over the output intervals, host round trips);
* batched: ``BatchExecutor(batch_size, cost=...)`` on ``ForwardLikelihood.batch`` (one vmapped, jitted
  ``BatchedFK`` run per chunk of particles).

The particles vary the origin (the pipeline's default posterior, so all runs take the same steps) or, with
``--rates``, also ``Dw`` and ``rho`` over a factor of 2 each (different step counts: the chunks are ordered by
cost). Both paths take the same steps; the table gives the largest difference of ``log L`` and of the
final fields (float32 extras) between them, the time per particle (after compilation), their ratio, and the
compilation time of the batched function. With ``--dtype float32`` the batched run is also timed in float32
(its difference to float64 is in the last column).

``--dtype-check`` instead compares float32 with float64 forward runs on one synthetic patient (MNI152, 2 mm,
default ``CTVSettings``): the MAP is fitted once, then BASIS runs in float64, in float32 and in float64 with
another seed (the Monte Carlo noise the float32 difference is to be read against); printed are the
differences of the origin's posterior mean (in posterior sd) and the Dice of the ensemble CTVs per margin,
and the largest ``log L`` and field differences of the two dtypes at the same parameters.

    python benchmarks/batching.py                          # 24^3 and 48^3, 64 particles, batches of 16
    python benchmarks/batching.py --sizes 24 48 64 --batch 16 64
    python benchmarks/batching.py --dtype-check
    python benchmarks/batching.py --products 512

``--products S`` times the CTV products instead (``bodil.tumor.products.posterior_ctvs``'s work): ``S`` box
samples of a 24^3 box resampled to a 1 mm input grid of 197 x 233 x 189 (the BraTS/MNI152 size) and streamed
through ``ctv_ensemble`` at margins 10, 15 and 20 mm, once padded to the whole grid (the former path) and once
on the box's window (``ctv_ensemble(window=)``); printed are the time per sample, the fixed cost (pairwise
statistics, distance maps), their ratio, the peak memory that numpy allocated (``tracemalloc``), and whether the
two results are identical.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bodil.inference.executors import BatchExecutor  # noqa: E402
from bodil.tumor.model import ORIGIN, ForwardLikelihood, tumor_model  # noqa: E402

TRUTH = dict(Dw=0.3, ratio=10.0, rho=0.05, M=1500.0, tau_lo=0.25, tau_up=0.675)


def phantom_model(n: int, nt: int, side: float = 120.0):
    """The model on an ``n^3`` box of side ``side`` mm: a brain ball (wm/gm layered), a tumour at the centre."""
    h = side / n
    x = (np.arange(n) + 0.5) * h - side / 2
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    brain = X**2 + Y**2 + Z**2 < (side / 3) ** 2
    wm = np.where(brain, 0.6 + 0.3 * np.sin(X / 9.0) * np.cos(Y / 7.0), 0.0)
    gm = np.where(brain, 0.95 - wm, 0.0)
    seed = np.zeros((n,) * 3, np.int8)
    seed[n // 2, n // 2, n // 2] = 2
    probe = tumor_model(wm, gm, seed, side, nt=nt)
    truth = {**TRUTH, **dict(zip(ORIGIN, (side / 2 + 3.0, side / 2 - 2.0, side / 2 + 1.0)))}
    u = np.asarray(probe.forward(truth)[-1])
    classes = np.where(u >= 0.675, 2, np.where(u >= 0.25, 1, 0)).astype(np.int8)
    model = tumor_model(wm, gm, classes, side, nt=nt, likelihood="sigmoid")
    return model, truth


def particles(truth: dict, count: int, rates: bool, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        theta = {k: np.float64(truth[k] + rng.normal(0.0, 3.0)) for k in ORIGIN}
        if rates:
            theta.update(Dw=np.float64(truth["Dw"] * 2 ** rng.uniform(-0.5, 0.5)),
                         rho=np.float64(truth["rho"] * 2 ** rng.uniform(-0.5, 0.5)))
        out.append(theta)
    return out


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def dtype_check() -> None:
    """float32 against float64 forward runs on one synthetic patient (module docstring)."""
    import dataclasses

    from bodil.tumor import CTVSettings, classes_from_labels, label_convention, mni152, pipeline, synthetic_patient
    from bodil.tumor.products import posterior_ctvs
    from bodil.tumor.segmentation import Segmentation

    anatomy = mni152(2)
    patient = synthetic_patient(anatomy, origin=(-28.0, -20.0, 16.0), dw=0.5, rho=0.045)
    conv = label_convention("brats2021")
    seg = Segmentation(classes_from_labels(patient.labels, conv), patient.labels, anatomy.affine, conv, None)
    s = CTVSettings()
    mf = pipeline.fit_map(seg, anatomy, s)

    runs = {}
    for name, dtype, seed in (("float64", "float64", s.seed), ("float32", "float32", s.seed),
                              ("float64 seed+1", "float64", s.seed + 1)):
        settings = dataclasses.replace(s, seed=seed, dtype=dtype)  # CTVSettings.dtype, bodil ctv --dtype
        t, (idata, mode) = timed(lambda: pipeline.sample_posterior(mf, settings))
        runs[name] = (idata, mode, posterior_ctvs(seg, anatomy, settings, mf, idata), t)
    ref, ref_mode = runs["float64"][0], runs["float64"][1]
    sd = np.array([float(ref.posterior[c].std()) for c in ORIGIN])
    print(f"{s.grid}^3 x {s.time_points}, {s.num_samples} samples; posterior sd of the origin (mm): "
          + ", ".join(f"{v:.2f}" for v in sd))
    print(f"{'run':<16} {'BASIS s':>7} {'origin mean diff / sd':>24} " + " ".join(f"{'Dice ' + str(int(m)):>9}"
                                                                              for m in s.margins_mm))
    for name, (idata, _, ctvs, t) in runs.items():
        diff = np.array([float(idata.posterior[c].mean() - ref.posterior[c].mean()) for c in ORIGIN]) / sd
        dice = []
        for m in s.margins_mm:
            a, b = ctvs.ensemble[m].ensemble, runs["float64"][2].ensemble[m].ensemble
            dice.append(2 * np.sum(a & b) / (a.sum() + b.sum()))
        print(f"{name:<16} {t:>7.1f} {' '.join(f'{d:+.3f}' for d in diff):>24} "
              + " ".join(f"{d:>9.4f}" for d in dice))
    thetas = [{c: np.float64(ref.posterior[c].values.ravel()[i]) for c in ORIGIN} for i in range(16)]
    f32 = ForwardLikelihood(ref_mode.model, dtype=jnp.float32)
    pairs = [(ref_mode(t), f32(t)) for t in thetas]
    print(f"same thetas (16 posterior samples): max |dlogL| {max(abs(a[0] - b[0]) for a, b in pairs):.2e}, "
          f"max |du(T)| {max(float(np.abs(a[1] - b[1]).max()) for a, b in pairs):.2e}")


def products(num_samples: int) -> None:
    """``--products``: the CTV ensemble of ``num_samples`` box samples on a 1 mm grid, padded and windowed; the
    time per sample is the difference to a run with half the samples (at least 42: both keep 21 masks)."""
    import tracemalloc

    from bodil.tumor.box import crop_around
    from bodil.tumor.ensemble import ctv_ensemble

    shape = (197, 233, 189)
    ii, jj, kk = np.meshgrid(*(np.arange(n) - n / 2 for n in shape), indexing="ij", sparse=True)
    brain = (ii / 85) ** 2 + (jj / 105) ** 2 + (kk / 85) ** 2 < 1
    r2 = (ii - 20) ** 2 + (jj + 10) ** 2 + (kk - 5) ** 2
    core, tumor = r2 < 15**2, r2 < 25**2
    crop = crop_around(tumor, np.eye(4), n=24)
    x = (np.arange(24) + 0.5) / 24 * crop.side_mm - crop.side_mm / 2
    rng = np.random.default_rng(0)
    shifts = rng.normal(0.0, 2.0, (num_samples, 3))
    widths = rng.uniform(8.0, 20.0, num_samples)

    def box_sample(k):  # a smooth tumour of varying reach, zero below 0.01
        d2 = sum((g - c) ** 2 for g, c in zip(np.meshgrid(x, x, x, indexing="ij", sparse=True), shifts[k]))
        f = np.exp(-d2 / (2 * widths[k] ** 2))
        return np.where(f < 0.01, 0.0, f)

    window = crop.input_window()

    def padded():
        full = np.zeros(shape)
        for k in range(num_samples):
            full[window] = np.clip(crop.to_input_window(box_sample(k))[1], 0.0, 1.0)
            yield full

    def windowed():
        for k in range(num_samples):
            yield np.clip(crop.to_input_window(box_sample(k))[1], 0.0, 1.0)

    print(f"CTV products: {num_samples} samples of a 24^3 box ({crop.side_mm:.0f} mm) on a 1 mm grid {shape}, "
          f"window {tuple(w.stop - w.start for w in window)}, margins 10 15 20 mm")
    print(f"{'path':>9} {'total s':>8} {'per sample ms':>13} {'fixed s':>8} {'peak MiB':>9}")
    results, per = {}, {}
    for name, gen in (("padded", padded), ("windowed", windowed)):
        kw = {} if name == "padded" else {"window": window}
        half = num_samples // 2  # both runs keep the same number of masks for the pairwise statistics
        t_half, _ = timed(lambda: ctv_ensemble(gen_k(gen, half), core, brain | tumor, (1.0,) * 3, **kw))
        tracemalloc.start()
        t, results[name] = timed(lambda: ctv_ensemble(gen(), core, brain | tumor, (1.0,) * 3, **kw))
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        per[name] = (t - t_half) / (num_samples - half)
        print(f"{name:>9} {t:>8.1f} {1e3 * per[name]:>13.1f} {t - num_samples * per[name]:>8.1f} {peak:>9.0f}",
              flush=True)
    same = all(np.array_equal(getattr(results["padded"][m], f), getattr(results["windowed"][m], f))
               for m in (10.0, 15.0, 20.0) for f in ("probability", "thresholds", "ensemble", "pair_dice"))
    print(f"per-sample ratio padded / windowed: {per['padded'] / per['windowed']:.2f}; identical results: {same}")


def gen_k(gen, k):
    """The first ``k`` items of ``gen()``."""
    for i, item in enumerate(gen()):
        if i == k:
            return
        yield item


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[24, 48])
    ap.add_argument("--time-points", type=int, default=12, help="time nodes (CTVSettings.time_points)")
    ap.add_argument("--particles", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[16], help="batch sizes (chunks) to time")
    ap.add_argument("--serial", type=int, default=16, help="particles timed on the serial path")
    ap.add_argument("--rates", action="store_true", help="vary Dw and rho too")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--dtype-check", action="store_true", help="float32 against float64 on a synthetic patient")
    ap.add_argument("--products", type=int, metavar="S", help="time the CTV products of S samples instead")
    args = ap.parse_args(argv)
    if args.dtype_check:
        return dtype_check()
    if args.products:
        if args.products < 42:
            ap.error("--products needs at least 42 samples (the per-sample time is measured against half of them)")
        return products(args.products)

    print(f"{jax.devices()[0].platform}, {args.time_points} time nodes, {args.particles} particles"
          + (", Dw and rho varied" if args.rates else ", origin varied"))
    print(f"{'box':>5} {'batch':>5} {'serial ms':>10} {'batched ms':>10} {'ratio':>6} {'compile s':>9} "
          f"{'max dlogL':>9} {'max dfield':>10}")
    for n in args.sizes:
        model, truth = phantom_model(n, args.time_points)
        sampled = ORIGIN + (("Dw", "rho") if args.rates else ())
        post = model.with_fixed(truth, infer=sampled)
        thetas = particles(truth, args.particles, args.rates)
        serial = ForwardLikelihood(post)
        serial(thetas[0])  # compile
        t_serial, reference = timed(lambda: [serial(t) for t in thetas[:args.serial]])
        per_serial = t_serial / args.serial
        for size in args.batch:
            fl = ForwardLikelihood(post, dtype=jnp.dtype(args.dtype))
            executor = BatchExecutor(size, cost=fl.cost, pad=True)
            t_compile, _ = timed(lambda: executor.evaluate(fl.batch, thetas[:1]))
            if size > 1:
                t_compile += timed(lambda: executor.evaluate(fl.batch, thetas[:size]))[0]
            t_batch, results = timed(lambda: executor.evaluate(fl.batch, thetas))
            per_batch = t_batch / len(thetas)
            d_ll = max(abs(float(r[0]) - s[0]) for r, s in zip(results, reference))
            d_u = max(float(np.abs(r[1] - s[1]).max()) for r, s in zip(results, reference))
            print(f"{n:>4}^3 {size:>5} {1e3 * per_serial:>10.2f} {1e3 * per_batch:>10.2f} "
                  f"{per_serial / per_batch:>6.2f} {t_compile:>9.1f} {d_ll:>9.2e} {d_u:>10.2e}", flush=True)


if __name__ == "__main__":
    main()
