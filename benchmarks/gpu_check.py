"""The tumour posterior end to end, timed by stage, with the device's memory: the GPU check of issue 20.

One synthetic patient (``bodil.tumor.synthetic_patient`` on MNI152 at 2 mm) goes through ``bodil.tumor.run_ctv``
with the forward limit (``inner="forward"``, BASIS particles evaluated in vmapped batches of ``--batch-size``).
The script prints the wall time of each stage (from the pipeline's log messages: box, MAP, posterior, CTVs,
files), BASIS's evaluations and time per evaluation, the device, its peak memory (``memory_stats()``, GPUs) and
the process's peak resident memory (CPU). The same script runs unchanged on a CPU and a GPU: JAX picks the
device (``JAX_PLATFORMS=cpu`` forces the CPU).

    python benchmarks/gpu_check.py                 # CPU-sized: 24^3 x 12, 64 samples (about a minute, 2 cores)
    python benchmarks/gpu_check.py --paper         # Amoudruz et al. 2025: 64^3 x 128, 512 samples (GPU)
    python benchmarks/gpu_check.py --paper --batch-size 256
    python benchmarks/gpu_check.py --surrogate 64 128   # the surrogate against the FK solver per crop

``--surrogate SIZE ...`` instead times the neural surrogate (Weidner et al. 2025) against the explicit FK
solver on crops of the shipped network's extent (128 mm) around the synthetic patient's tumour, resampled to
``SIZE^3`` (``benchmarks/surrogate.py``'s ``forward_time_per_crop``: one jit-compiled batched network call per
``--crops`` crops against as many FK runs; at another size than the shipped 32^3 the network is one of the same
architecture with random weights, whose cost does not depend on them). The explicit solver's step count grows
with the square of the resolution, the network's cost with its volume: Weidner et al. claim the surrogate wins
on fine grids, and this measures where.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

from bodil.tumor import CTVSettings, classes_from_labels, label_convention, mni152, run_ctv  # noqa: E402
from bodil.tumor import synthetic_patient  # noqa: E402
from bodil.tumor.segmentation import Segmentation  # noqa: E402


class StageClock(logging.Handler):
    """Records when each message of the pipeline's logger arrives."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.marks: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.marks.append((time.perf_counter(), record.getMessage().split(":")[0]))


def device_memory() -> str:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    limit = stats.get("bytes_limit")
    if peak is None:
        return "n/a (no memory_stats on this device)"
    return f"{peak / 2**30:.2f} GiB peak" + (f" of {limit / 2**30:.1f} GiB" if limit else "")


def surrogate_timing(sizes, crops: int) -> None:
    """``--surrogate``: seconds per crop of the surrogate and of the FK solver at each size (see the docstring)."""
    import types

    import numpy as np

    from surrogate import forward_time_per_crop  # benchmarks/surrogate.py (the script's folder)

    from bodil.forward import surrogate as S
    from bodil.forward.dataset import FKSettings
    from bodil.tumor import crop_around
    from bodil.tumor.surrogate import SurrogateBox

    model = S.pretrained("forward")
    anatomy = mni152(2)
    patient = synthetic_patient(anatomy, origin=(-28.0, -20.0, 16.0), dw=0.5, rho=0.045)
    tumour = patient.labels > 0
    # the pipeline's placement of the network's crop (centred on the tumour) and its tissue
    tissue = SurrogateBox(model, anatomy, tumour, crop_around(tumour, anatomy.affine), t_final=100.0).tissue
    n, h = model.architecture.size, model.spacing_mm
    rng = np.random.default_rng(0)
    lo, hi = np.asarray(model.theta_lower), np.asarray(model.theta_upper)
    theta = lo + (hi - lo) * rng.uniform(0.3, 0.7, size=(crops, lo.size))  # away from the edges of the ranges
    cases = types.SimpleNamespace(theta=theta, tissue=np.repeat(tissue[None], crops, axis=0))
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}); {crops} crops of {n * h:g} mm, theta drawn inside "
          f"the training ranges")
    print(f"{'crop':>6} {'spacing mm':>10} {'surrogate s':>12} {'FK s':>8} {'FK / surrogate':>15}")
    for size in sizes:
        t_sur, t_fk = forward_time_per_crop(model, cases, FKSettings(), size, crops)
        print(f"{size:>5}^3 {n * h / size:>10.2f} {t_sur:>12.3f} {t_fk:>8.3f} {t_fk / t_sur:>15.2f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--paper", action="store_true", help="64^3 x 128 time nodes, 512 samples")
    ap.add_argument("--grid", type=int, help="points per axis of the box (default 24, 64 with --paper)")
    ap.add_argument("--time-points", type=int, help="time nodes (default 12, 128 with --paper)")
    ap.add_argument("--samples", type=int, help="BASIS samples (default 64, 512 with --paper)")
    ap.add_argument("--batch-size", type=int, help="particles per vmapped run (1: one at a time; default 128 on "
                    "a GPU, CTVSettings' default on a CPU)")
    ap.add_argument("--surrogate", type=int, nargs="+", metavar="SIZE",
                    help="time the surrogate against the FK solver per crop at these sizes instead (e.g. 64 128)")
    ap.add_argument("--crops", type=int, default=4, help="crops per timing with --surrogate (default 4)")
    args = ap.parse_args(argv)
    if args.surrogate:
        return surrogate_timing(args.surrogate, args.crops)

    sizes = dict(grid=64, time_points=128, num_samples=512) if args.paper else dict(grid=24, time_points=12,
                                                                                     num_samples=64)
    sizes.update({k: v for k, v in (("grid", args.grid), ("time_points", args.time_points),
                                    ("num_samples", args.samples)) if v is not None})
    batch = args.batch_size or (128 if jax.default_backend() == "gpu" else CTVSettings().batch_size)
    settings = CTVSettings(**sizes, batch_size=batch)
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}); box {settings.grid}^3 x {settings.time_points}, "
          f"{settings.num_samples} samples, batch size {settings.batch_size}", flush=True)

    anatomy = mni152(2)
    patient = synthetic_patient(anatomy, origin=(-28.0, -20.0, 16.0), dw=0.5, rho=0.045)
    conv = label_convention("brats2021")
    seg = Segmentation(classes_from_labels(patient.labels, conv), patient.labels, anatomy.affine, conv, None)
    clock = StageClock()
    logger = logging.getLogger("bodil.tumor.pipeline")
    logger.addHandler(clock)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as work:
            run = run_ctv(seg, anatomy, f"{work}/out", settings=settings, patient_id="synthetic", progress=False)
    finally:
        logger.removeHandler(clock)
        logger.setLevel(old_level)
    end = time.perf_counter()

    print(f"\n{'stage (log message)':<24} {'seconds':>8}")
    marks = [(start, "inputs")] + clock.marks + [(end, "end")]
    for (t0, name), (t1, _) in zip(marks[:-1], marks[1:]):
        print(f"{name[:24]:<24} {t1 - t0:>8.1f}")
    print(f"{'total':<24} {end - start:>8.1f}")
    inner = run.summary["posterior"].get("inner_solves") or {}
    evaluations, wall = inner.get("evaluations"), inner.get("wall_time")
    if evaluations:
        print(f"\nBASIS: {evaluations} forward runs, {1e3 * wall / evaluations:.1f} ms each (batched wall time "
              f"per run)")
    print(f"device memory: {device_memory()}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
    print(f"process peak resident memory: {rss:.2f} GiB")
    origin = run.summary["posterior"]["origin_world_mm"]
    print("posterior origin (world mm, mean +- sd): "
          + ", ".join(f"{k} {v['mean']:.2f} +- {v['sd']:.2f}" for k, v in origin.items()))


if __name__ == "__main__":
    main()
