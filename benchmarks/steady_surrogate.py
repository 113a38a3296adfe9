"""Per-sample time of the steady diffusion surrogate against the sparse direct solve and against time
integration to steady state, and the break-even count of Toledo-Marín et al. (2021, "Deep learning approaches
to surrogates for solving the diffusion equation for mechanistic real-world simulations", eq. 4) from our own
figures.

    nice -n 10 .venv/bin/python benchmarks/steady_surrogate.py [--weights FILE] [--samples 10] [--batch 64]

Eq. 4: with ``delta`` seconds per direct calculation, ``epsilon`` per surrogate evaluation, ``M`` training
samples and ``E`` seconds of training, the surrogate pays off after

    N_min = (M + E / delta) / (1 - epsilon / delta)

evaluations. ``M`` and ``E`` come from the weights file (its training record); ``delta`` is measured here for
each reference solver. Geometries are drawn from seed 1000 (not the training data's streams).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _time(fn, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> None:
    from bodil.forward import steady as S
    from bodil.forward.steady_network import WEIGHTS_FILE, load_steady

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=WEIGHTS_FILE, help="steady surrogate weights (default: the shipped ones)")
    p.add_argument("--samples", type=int, default=10, help="geometries per reference solver (default 10)")
    p.add_argument("--batch", type=int, default=64, help="batch of the batched surrogate (default 64)")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="time integration stops when max |D lap c - gamma c| < TOL (default 1e-6)")
    args = p.parse_args(argv)

    model = load_steady(args.weights)
    n = model.architecture.size
    rng = np.random.default_rng(1000)
    geoms = [S.sample_geometry(rng, n) for _ in range(max(args.samples, 1))]
    x = np.stack([S.source_image(g) for g in geoms]).astype(np.float32)
    exact = np.stack([S.steady_state(g) for g in geoms])

    rows = {}
    rows["sparse direct (splu per geometry)"] = np.mean([_time(lambda g=g: S.steady_state(g), 1) for g in geoms])
    solver = S.SteadySolver(geoms[0])
    rows["  same geometry, new values (factorised)"] = _time(lambda: solver.solve([1.0, 0.5]), 20)
    k = max(1, min(3, len(geoms)))
    rows[f"explicit Euler to steady (tol {args.tol:g})"] = np.mean(
        [_time(lambda g=g: S.relax_to_steady(g, tol=args.tol), 1) for g in geoms[:k]])
    rows[f"implicit Euler to steady (tol {args.tol:g})"] = np.mean(
        [_time(lambda g=g: S.relax_to_steady(g, method="implicit", tol=args.tol), 1) for g in geoms])
    one = x[:1]
    model.predict(one).block_until_ready()
    rows["surrogate, single image"] = _time(lambda: model.predict(one).block_until_ready(), 20)
    big = np.resize(x, (args.batch, n, n))
    model.predict(big).block_until_ready()
    rows[f"surrogate, batch of {args.batch} (per image)"] = _time(
        lambda: model.predict(big).block_until_ready(), 3) / args.batch
    err = np.abs(np.asarray(model.predict(x), np.float64) - exact)

    eps = rows[f"surrogate, batch of {args.batch} (per image)"]
    info = model.info
    m = info.get("dataset", {}).get("n_train_used", float("nan"))
    e = info.get("wall_s", float("nan"))
    print(f"weights {os.path.basename(args.weights)}: {n} x {n} lattice, trained on {m} samples in {e:.0f} s; "
          f"residual on these {len(geoms)} geometries: mean {err.mean():.2e}, max {err.max():.2e}")
    print(f"{'method':46s} {'s / sample':>12s} {'x surrogate':>12s}   N_min (eq. 4)")
    for name, t in rows.items():
        nmin = (m + e / t) / (1 - eps / t) if t > eps else float("inf")
        extra = f"{nmin:,.0f}" if not name.startswith("surrogate") and not name.startswith("  ") else ""
        print(f"{name:46s} {t:12.3e} {t / eps:12.3g}   {extra}")


if __name__ == "__main__":
    main()
