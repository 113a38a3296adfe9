"""The ``bodil`` command.

    bodil demo [--out DIR]      the built-in default case, end to end

Until the tumour pipeline lands, the default case is seed 003's harmonic oscillator (sec. 3.1): MAP of the
trajectory and of omega^2 by Gauss-Newton (ODIL), printed with its report and written as a figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def _enable_float64():
    import jax

    jax.config.update("jax_enable_x64", True)  # the command owns its process; the library never does this


def demo(out: str) -> int:
    _enable_float64()
    import jax.numpy as jnp
    import numpy as np

    import bodil
    from bodil.cases import oscillator

    print("bodil demo: harmonic oscillator, seed 003 sec. 3.1 (N = 64, T = 10, 20 data in (0, T/2), "
          "sigma = 0.1, beta = 1e4)")
    problem = oscillator(infer_omega=True, dtype=jnp.float64)
    fit = bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, method="gauss-newton", progress=True)
    print(fit.report)
    truth = problem.truth
    err_x = float(np.max(np.abs(np.asarray(fit.u["x"]) - truth["x"])))
    print(f"omega^2: MAP {float(fit.theta['omega2']):.4f} (truth {truth['omega2']:.4f})")
    print(f"x(0), v(0): MAP {float(fit.u['x'][0]):.4f}, {float(fit.u['v'][0]):.4f} (truth 0.5000, 0.2000)")
    print(f"max |x_MAP - x_true| over [0, T]: {err_x:.4f}")
    if not fit.report.converged:
        print("error: the MAP solve did not converge", file=sys.stderr)
        return 1
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "oscillator_map.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(truth["t"], truth["x"], "k--", label="truth")
    ax.plot(truth["t"], np.asarray(fit.u["x"]), "C0", label="MAP (ODIL, Gauss-Newton)")
    ax.plot(problem.data["t"], problem.data["y"], "x", color="C3", label="data")
    ax.set_xlabel("t")
    ax.set_ylabel("x(t)")
    ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=out)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written figure
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    print(f"figure: {os.path.abspath(path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bodil", description="Bayesian inference for PDE inverse problems (B-ODIL).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the built-in default case end to end")
    p_demo.add_argument("--out", default="bodil-demo", help="output folder (default: ./bodil-demo)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.out)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
