"""The explicit Fisher-Kolmogorov step: bodil's sliced form (``bodil.forward.fk._euler``) against the flux-difference
form (``bodil.stencil.diffusion_operator``), which computes the same numbers.

Every forward run of the tumour pipeline (Nelder-Mead's ~900, BASIS's ~1500 in batches) is a loop of these
steps on the model box, so their speed is most of a patient's wall time. Both forms are timed on random tissue
and a random field of the default box (24^3, float64) for one run and for a vmapped batch, interleaved so that
the machine's load falls on both alike; the table gives the median time of a run of ``--steps`` steps and the
ratio, and checks that the two fields are equal bit for bit.

    .venv/bin/python benchmarks/fk_step.py
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bodil import stencil  # noqa: E402
from bodil.forward.fk import _euler, _faces  # noqa: E402


def flux_difference_step(v, faces, rho, dt):
    """The baseline: ``v + dt (A v + rho v (1 - v))`` with ``A`` from ``stencil.diffusion_operator``."""
    return v + dt * (stencil.diffusion_operator(v, faces, (False,) * len(faces)) + rho * v * (1.0 - v))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=24, help="points per axis (default 24, the pipeline's box)")
    ap.add_argument("--steps", type=int, default=240, help="steps per run (default 240)")
    ap.add_argument("--batch", type=int, default=16, help="members of the vmapped batch (default 16)")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    shape = (args.n,) * 3
    wm = rng.random(shape)
    gm = rng.random(shape) * (1 - wm)
    sides, _ = _faces(jnp.asarray(wm), jnp.asarray(gm), 0.9, 0.09, 0.1, (5.0, 5.0, 5.0))
    faces = tuple(above[tuple(slice(0, -1) if k == a else slice(None) for k in range(3))]
                  for a, (above, _) in enumerate(sides))  # the n - 1 interior faces per axis
    rho, dt, steps = 0.1, 0.5, args.steps
    u = jnp.asarray(rng.random(shape) * 0.5)
    batch = jnp.stack([u * (1 - 0.01 * k) for k in range(args.batch)])

    def run(step, f):
        return lambda v: jax.lax.fori_loop(0, steps, lambda _, w: step(w, f, rho, dt), v)

    cases = {
        "one run": (u, jax.jit(run(flux_difference_step, faces)), jax.jit(run(_euler, sides))),
        f"batch of {args.batch}": (batch, jax.jit(jax.vmap(run(flux_difference_step, faces))),
                                   jax.jit(jax.vmap(run(_euler, sides)))),
    }
    print(f"# {args.n}^3 float64, {steps} steps per run, median of {args.repeats} interleaved timings\n")
    print("| case | flux differences (ms) | bodil, sliced (ms) | ratio | equal bit for bit |")
    print("|---|---|---|---|---|")
    for name, (x, base, ours) in cases.items():
        same = bool(jnp.array_equal(base(x), ours(x)))
        times = {"base": [], "ours": []}
        for _ in range(args.repeats):
            for key, f in (("base", base), ("ours", ours)):
                t = time.perf_counter()
                f(x).block_until_ready()
                times[key].append(time.perf_counter() - t)
        b, o = np.median(times["base"]), np.median(times["ours"])
        print(f"| {name} | {1e3 * b:.1f} | {1e3 * o:.1f} | {b / o:.2f} | {same} |")


if __name__ == "__main__":
    main()
