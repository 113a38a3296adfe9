"""The ``bodil`` command.

    bodil ctv --seg SEG (--wm WM --gm GM [--csf CSF] | --tissue-labels MAP | --atlas mni152 | --t1 T1)
              --labels brats2021 --out DIR [--samples N --grid N --time-points N --seed S]
    bodil ctv --brats-dir DIR --out DIR [...]      (a BraTS case's files; tissue from its T1)
    bodil synth --out DIR [--resolution 2 --origin X Y Z --dw DW --rho RHO --t-final T]
    bodil demo [--out DIR] [--native]
    bodil dataset --out DIR [--size 64 --spacing 2 --train N --val N --test N --seed S --resume]
    bodil train-surrogate --data DIR --out FILE [--epochs E --batch B --width C --resume]
    bodil dataset-steady --out DIR [--train N --val N --test N --seed S --paper --resume]
    bodil train-steady --data DIR --out FILE [--epochs E --batch B --loss mae --weight W --width-scale F --resume]

``ctv`` infers the tumour's growth from a segmentation (NIfTI) and tissue maps and writes the posterior
CTV ensemble and a report; ``synth`` grows a synthetic patient on the MNI152 anatomy; ``demo`` does both
on the built-in default (a synthetic patient on MNI152 at 2 mm). Bad input exits with status 2 and a
message on stderr; nothing is written then. The stages of a run (bodil's ``logging`` records at level INFO
and above) are shown on stderr as ``[bodil] ...`` lines; results go to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _configure_jax():
    """float64 and the persistent compilation cache, for the command's own process."""
    import jax

    jax.config.update("jax_enable_x64", True)  # the command owns its process; the library never does either
    _enable_compilation_cache()


def _enable_compilation_cache():
    """Keep JAX's compiled kernels between runs of the command (JAX's persistent compilation cache), in
    ``$XDG_CACHE_HOME/bodil/jax`` (default ``~/.cache/bodil/jax``), every kernel however quick to compile: a second
    run skips the compilation (about 20 s of the demo's 55 s). A ``JAX_COMPILATION_CACHE_DIR`` in the environment
    is the user's choice and wins (empty: no cache)."""
    import jax

    if "JAX_COMPILATION_CACHE_DIR" in os.environ or jax.config.jax_compilation_cache_dir:
        return
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "bodil", "jax"))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (not the one at set-up), so redirections and captures see it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _show_progress_messages() -> None:
    """Show bodil's log records (INFO and above) on stderr as ``[bodil] message``; once per process."""
    logger = logging.getLogger("bodil")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[bodil] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _settings(args):
    from .tumor.settings import CTVSettings

    over = {k: v for k, v in (("grid", args.grid), ("time_points", args.time_points), ("num_samples", args.samples),
                              ("seed", args.seed), ("t_final", args.t_final),
                              ("inner_iterations", args.inner_iterations), ("inner", args.inner),
                              ("initializer", args.init), ("map_parameters", args.fit),
                              ("posterior_parameters", args.sample), ("dtype", args.dtype),
                              ("max_spacing_mm", args.max_spacing), ("thresholds", args.thresholds),
                              ("seed_dt2", args.seed_dt2))
            if v is not None}
    if args.error_correlation is not None:
        over["error_correlation_mm"] = args.error_correlation or None  # 0: untempered
    # made anew, not replaced: the defaults left unset (the fitted and sampled parameters) follow --inner and --fit
    return CTVSettings.paper(**over) if args.paper else CTVSettings(**over)


def _anatomy(args):
    from .tumor import load_tissue, load_tissue_labels, mni152

    given = [bool(args.wm or args.gm), bool(args.tissue_labels), bool(args.atlas), bool(args.t1)]
    if sum(given) != 1:
        from .io import InputError

        raise InputError("bodil ctv: give the tissue exactly one way: --wm WM --gm GM [--csf CSF], "
                         "--tissue-labels MAP, --atlas mni152, or --t1 T1 (maps by atlas registration).")
    if args.atlas:
        return mni152(args.resolution), {"atlas": f"mni152 ({args.resolution} mm, nilearn)"}
    if args.tissue_labels:
        return load_tissue_labels(args.tissue_labels), {"tissue labels": args.tissue_labels}
    if not (args.wm and args.gm):
        from .io import InputError

        raise InputError("bodil ctv: --wm and --gm go together (and optionally --csf).")
    files = {"wm": args.wm, "gm": args.gm, **({"csf": args.csf} if args.csf else {})}
    return load_tissue(args.wm, args.gm, args.csf), files


def ctv(args) -> int:
    _configure_jax()
    from .tumor.pipeline import run_ctv
    from .tumor.segmentation import load_segmentation

    _brats_case(args)
    if not args.seg:
        from .io import InputError

        raise InputError("bodil ctv: give the segmentation (--seg SEG) or a BraTS case folder (--brats-dir DIR).")
    seg = load_segmentation(args.seg, args.labels or "brats2021")
    settings = _settings(args)  # refused before any work, the registration included
    native = None
    if args.t1 and not (args.wm or args.gm or args.tissue_labels or args.atlas):  # tissue by atlas registration
        from .io import check_output
        from .tumor.registration_qc import check_sequences, native_tissue

        check_output(args.out, args.overwrite)  # refused now, not after the registration's minute of work
        files = check_sequences({k: getattr(args, k) for k in ("t1", "t1c", "t2", "flair")})
        native = native_tissue(args.t1, seg, progress=True)
    anatomy, files = (native.anatomy, files) if native else _anatomy(args)
    res = run_ctv(seg, anatomy, args.out, settings=settings, patient_id=args.patient_id,
                  inputs={"segmentation": args.seg, **files}, overwrite=args.overwrite, resume=args.resume,
                  registration=native)
    _print_result(res)
    return 0


def _brats_case(args) -> None:
    """``--brats-dir``: the case's files into ``args`` (explicit options win) and what was found on stdout."""
    if not args.brats_dir:
        return
    from .tumor.brats import find_brats_case

    case = find_brats_case(args.brats_dir)
    print(case.describe())
    tissue_given = bool(args.wm or args.gm or args.tissue_labels or args.atlas)
    for key in ("seg", "t1", "t1c", "t2", "flair"):
        if getattr(args, key) is None and not (key == "t1" and tissue_given):  # given maps: no registration
            setattr(args, key, getattr(case, key))
    args.labels = args.labels or case.labels
    args.patient_id = args.patient_id or case.case_id


def _print_result(res) -> None:
    post = res.summary["posterior"]["origin_world_mm"]
    print("initial position (world mm, posterior mean +- sd): "
          + ", ".join(f"{c} {post[c]['mean']:.1f} +- {post[c]['sd']:.1f}" for c in "xyz"))
    for row in res.summary["ctv"]:
        print(f"margin {row['margin_mm']:g} mm: standard CTV {row['standard_volume_cm3']:.1f} cm^3, boundary "
              f"spread median {row['spread_median_mm']:.1f} mm (95%: {row['spread_p95_mm']:.1f} mm), "
              f"Dice between samples {row['dice_mean']:.3f}")
    print(f"report: {res.files['report_pdf']}")
    print(f"        {res.files['report_html']}")
    print(f"all outputs: {res.out}")


def synth(args) -> int:
    _configure_jax()
    from .tumor import mni152, synthetic_patient, write_synthetic

    anatomy = mni152(args.resolution)
    options = {k: v for k, v in (("dw", args.dw), ("rho", args.rho), ("t_final", args.t_final)) if v is not None}
    patient = synthetic_patient(anatomy, origin=args.origin, **options)
    paths = write_synthetic(patient, args.out, overwrite=args.overwrite)
    t = patient.truth
    print(f"synthetic patient on MNI152 ({args.resolution} mm): origin {[round(v, 1) for v in t['origin_world']]} mm, "
          f"Dw {t['dw']:g} mm^2/day, rho {t['rho']:g} /day, T {t['t_final']:g} days")
    print(f"segmentation (BraTS 2021 labels): {paths['seg']}")
    print(f"tissue maps: {paths['wm']}, {paths['gm']}, {paths['csf']}; truth: {paths['truth']}")
    return 0


def demo(args) -> int:
    _configure_jax()
    import time

    from .tumor import mni152, synthetic_patient, write_synthetic
    from .tumor.pipeline import run_ctv
    from .tumor.segmentation import load_segmentation

    start = time.perf_counter()
    out = os.path.abspath(args.out)
    if args.native:
        return _demo_native(args, out, start)
    print("bodil demo: a synthetic glioma grown on the MNI152 anatomy (2 mm), then its posterior CTV ensemble")
    anatomy = mni152(2)
    patient = synthetic_patient(anatomy)
    paths = write_synthetic(patient, os.path.join(out, "patient"), overwrite=True)
    t = patient.truth
    print(f"patient: {paths['seg']} (truth: origin {[round(v, 1) for v in t['origin_world']]} mm, "
          f"Dw {t['dw']:g} mm^2/day, rho {t['rho']:g} /day)")
    seg = load_segmentation(paths["seg"], "brats2021")
    res = run_ctv(seg, anatomy, os.path.join(out, "ctv"), settings=_settings(args), patient_id="synthetic-demo",
                  truth=t, inputs={"segmentation": paths["seg"], "atlas": "mni152 (2 mm, nilearn)"}, overwrite=True,
                  resume=True)  # an interrupted demo continues where it stopped
    _print_result(res)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def _demo_native(args, out, start) -> int:
    """``demo --native``: a warped-atlas patient in its own space (T1 + segmentation), tissue by registration."""
    import time

    from .tumor.pipeline import run_ctv
    from .tumor.registration_qc import native_tissue
    from .tumor.segmentation import load_segmentation
    from .tumor.warped_patient import warped_patient, write_warped_patient

    print("bodil demo --native: the MNI152 atlas warped into a patient's own space (2 mm, a lesion with mass "
          "effect), tissue maps by registering the atlas to its T1, then the posterior CTV ensemble")
    paths = write_warped_patient(warped_patient(0, shape=(120, 120, 78), spacing_mm=2.0, resolution=2),
                                 os.path.join(out, "patient"), overwrite=True)
    print(f"patient: {paths['t1']}, {paths['seg']} (true tissue maps beside them)")
    seg = load_segmentation(paths["seg"], "brats2021")
    native = native_tissue(paths["t1"], seg, progress=True)
    res = run_ctv(seg, native.anatomy, os.path.join(out, "ctv"), settings=_settings(args),
                  patient_id="warped-atlas-demo", inputs={"segmentation": paths["seg"], "t1": paths["t1"]},
                  overwrite=True, registration=native)
    print(f"registration: NCC {native.result.similarity['ncc']:.3f}; maps and QC figure in {res.out}")
    _print_result(res)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def dataset(args) -> int:
    from .forward.dataset import DatasetSettings, generate_dataset
    from .tumor import mni152, resample_isotropic

    settings = DatasetSettings(size=args.size, spacing_mm=args.spacing, n_train=args.train, n_val=args.val,
                               n_test=args.test, seed=args.seed, shard_size=args.shard_size)
    wm, gm, _ = resample_isotropic(mni152(2), args.spacing)
    manifest = generate_dataset(args.out, wm, gm, settings, resume=args.resume,
                                anatomy=f"MNI152 2009 (nilearn, 2 mm) resampled to {args.spacing:g} mm")
    rej = manifest["rejections"]
    print(f"dataset {args.out}: {args.train}/{args.val}/{args.test} train/val/test samples of {args.size}^3 at "
          f"{args.spacing:g} mm; {rej.get('kept', 0)} kept of {rej.get('draws', 0)} draws in this and earlier runs; "
          f"{manifest['wall_s']:.0f} s")
    return 0


def train_surrogate(args) -> int:
    from .forward.surrogate import TrainSettings, train_surrogate as train

    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch, learning_rate=args.lr, width=args.width,
                             seed=args.seed, max_train=args.max_train, kind=args.kind)
    history = train(args.data, args.out, settings, resume=args.resume)
    last = history[-1]
    print(f"{args.kind} network {args.out}: {len(history)} epochs, validation MSE {last['val_mse']:.3g}, "
          f"{sum(h['wall_s'] for h in history):.0f} s")
    return 0


def dataset_steady(args) -> int:
    from .forward.steady import SteadyDatasetSettings, generate_steady_dataset

    sizes = (16000, 1000, 4000) if args.paper else (args.train, args.val, args.test)
    settings = SteadyDatasetSettings(n_train=sizes[0], n_val=sizes[1], n_test=sizes[2], seed=args.seed,
                                     shard_size=args.shard_size)
    manifest = generate_steady_dataset(args.out, settings, resume=args.resume)
    print(f"steady dataset {args.out}: {sizes[0]}/{sizes[1]}/{sizes[2]} train/val/test samples on a "
          f"{settings.size} x {settings.size} lattice; {manifest['wall_s']:.0f} s")
    return 0


def train_steady(args) -> int:
    from .forward.steady_training import SteadyTrainSettings, train_steady as train

    settings = SteadyTrainSettings(epochs=args.epochs, batch_size=args.batch, learning_rate=args.lr, loss=args.loss,
                                   weight=args.weight, p1=args.p1, p2=args.p2, dropout=tuple(args.dropout),
                                   width_scale=args.width_scale, output_norm=not args.no_output_norm,
                                   rollback=not args.no_rollback, seed=args.seed,
                                   max_train=args.max_train)
    model = train(args.data, args.out, settings, resume=args.resume)
    m = model.info["test_metrics"]
    print(f"steady surrogate {args.out}: {len(model.info['history'])} epochs ({model.info['rollbacks']} rolled back), "
          f"test residual mean {m['residual_mean']:.3g}, 99th percentile {m['residual_p99']:.3g}, max "
          f"{m['residual_max']:.3g}; {model.info['wall_s']:.0f} s")
    return 0


def _size_options(p):
    p.add_argument("--grid", type=int, help="points per axis of the box (default 24; the paper: 64)")
    p.add_argument("--max-spacing", type=float, metavar="MM",
                   help="largest box spacing in mm: a large tumour's box gets more than --grid points per axis")
    p.add_argument("--time-points", type=int, help="time nodes (default 12; the paper: 128)")
    p.add_argument("--samples", type=int, help="posterior samples (default 128; the paper: 512)")
    p.add_argument("--seed", type=int, help="sampler seed (default 0)")
    p.add_argument("--t-final", type=float, help="days from onset to imaging (default 100)")
    p.add_argument("--seed-dt2", type=float, metavar="MM2",
                   help="Dt^2 of the initial tumour seed in mm^2 (default 4: a ball of about 5 mm radius; 15 is "
                        "GliODIL's seed of about 10 mm, the surrogate's)")
    p.add_argument("--inner", choices=["forward", "odil", "surrogate"],
                   help="log p(origin | data) per BASIS evaluation: 'forward' (PDE solved exactly, explicit FK run; "
                        "default), 'odil' (an inner ODIL solve, the finite-lambda mode approximation) or "
                        "'surrogate' (the shipped neural surrogate in place of the FK run)")
    p.add_argument("--init", choices=["forward", "surrogate"],
                   help="start of the MAP's forward fit (Nelder-Mead on FK runs): 'forward' (from the "
                        "segmentation's geometry; default) or 'surrogate' (an L-BFGS fit through the neural surrogate)")
    p.add_argument("--inner-iterations", type=int, help="Gauss-Newton iterations per inner solve (default 6)")
    p.add_argument("--fit", nargs="+", metavar="NAME",
                   help="parameters fitted by the MAP (default: Dw rho ratio x0 y0 z0, ratio = Dw/Dg, without ratio "
                        "with the surrogate; also M, the seed's mass, tau_lo, tau_up); the others stay fixed "
                        "(M = 1500, Dw/Dg = 10, thresholds 0.25 and 0.675)")
    p.add_argument("--sample", nargs="+", metavar="NAME",
                   help="parameters sampled by BASIS, among the fitted ones and the origin (default: x0 y0 z0 and "
                        "ratio where it is fitted); the others are held at the MAP")
    p.add_argument("--thresholds", choices=["marginalised", "fixed"],
                   help="the visibility thresholds in the posterior when not sampled: integrated over their prior "
                        "('marginalised', the default where the sigmoid likelihood and --inner forward or surrogate "
                        "allow it) or held at the MAP's values ('fixed')")
    p.add_argument("--error-correlation", type=float, metavar="MM",
                   help="distance in mm over which segmentation and model errors are correlated: the posterior "
                        "counts one independent observation per MM^3 (default 25; 0: one per voxel, untempered)")
    p.add_argument("--dtype", choices=["float64", "float32"],
                   help="precision of the posterior's forward runs (default float64; float32 halves their memory, "
                        "the likelihood is summed in float64)")
    p.add_argument("--paper", action="store_true", help="Amoudruz et al.'s (2025) sizes (64^3 x 128, 512 samples; GPU)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bodil", description="Bayesian inference for PDE inverse problems (B-ODIL).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ctv", help="posterior CTV ensemble and report from a segmentation and tissue maps")
    p.add_argument("--seg", help="tumour segmentation (NIfTI); required unless --brats-dir")
    p.add_argument("--labels",
                   help="label convention: brats2021 (1 necrosis, 2 edema, 4 enhancing), brats2023 (1 non-enhancing "
                        "core, 2 edema, 3 enhancing) or a mapping like '1:core,2:edema,4:core' (default brats2021; "
                        "with --brats-dir: from the files' naming)")
    p.add_argument("--brats-dir", help="folder of one BraTS case (2021: *_t1, *_t1ce, *_t2, *_flair, *_seg; 2023+: "
                   "*-t1n, *-t1c, *-t2w, *-t2f, *-seg): segmentation, T1 and label convention from it")
    p.add_argument("--t1", help="the patient's T1 (NIfTI): tissue maps by registering the MNI152 atlas to it "
                   "(dipy affine + SyN, the tumour left out); the maps are written to --out")
    p.add_argument("--t1c", help="T1 with contrast (NIfTI; checked and recorded, not used by the model)")
    p.add_argument("--t2", help="T2 (NIfTI; checked and recorded, not used by the model)")
    p.add_argument("--flair", help="FLAIR (NIfTI; checked and recorded, not used by the model)")
    p.add_argument("--wm", help="white-matter fraction map (NIfTI, same grid as --seg)")
    p.add_argument("--gm", help="grey-matter fraction map")
    p.add_argument("--csf", help="CSF fraction map (optional)")
    p.add_argument("--tissue-labels", help="tissue label map (0 background, 1 CSF, 2 GM, 3 WM)")
    p.add_argument("--atlas", choices=["mni152"], help="use the MNI152 2009 atlas shipped with nilearn")
    p.add_argument("--resolution", type=int, choices=[1, 2], default=2, help="atlas resolution in mm (default 2)")
    p.add_argument("--out", required=True, help="output folder (created; must not exist or be empty)")
    p.add_argument("--patient-id", help="identifier on the report (default: the segmentation's file name)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.checkpoint (same inputs and settings)")
    _size_options(p)

    p = sub.add_parser("synth", help="grow a synthetic patient on the MNI152 anatomy")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resolution", type=int, choices=[1, 2], default=2, help="atlas resolution in mm (default 2)")
    p.add_argument("--origin", type=float, nargs=3, metavar=("X", "Y", "Z"), help="initial position, world mm")
    p.add_argument("--dw", type=float, help="white-matter diffusivity, mm^2/day")
    p.add_argument("--rho", type=float, help="proliferation rate, 1/day")
    p.add_argument("--t-final", type=float, help="days from onset to imaging")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")

    p = sub.add_parser("demo", help="the built-in default case end to end (synthetic patient on MNI152)")
    p.add_argument("--out", default="bodil-demo", help="output folder (default: ./bodil-demo)")
    p.add_argument("--native", action="store_true",
                   help="a patient in its own space: T1 + segmentation, tissue maps by atlas registration")
    _size_options(p)

    p = sub.add_parser("dataset", help="Fisher-Kolmogorov training data for the surrogate (MNI152 anatomy)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=64, help="crop side in voxels (default 64; Weidner et al. (2025): 128 at 1 mm)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2)")
    p.add_argument("--train", type=int, default=1000, help="training samples (default 1000)")
    p.add_argument("--val", type=int, default=100, help="validation samples (default 100)")
    p.add_argument("--test", type=int, default=100, help="test samples (default 100)")
    p.add_argument("--shard-size", type=int, default=50, help="samples per file (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted dataset in OUT")

    p = sub.add_parser("train-surrogate", help="train the ConvNeXt U-Net surrogate (or the inverse encoder)")
    p.add_argument("--data", required=True, help="dataset folder (bodil dataset)")
    p.add_argument("--out", required=True, help="weights file to write (.eqx); a checkpoint goes next to it")
    p.add_argument("--kind", choices=["forward", "inverse"], default="forward",
                   help="forward: theta + tissue -> concentration; inverse: concentration + tissue -> theta")
    p.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3, cosine decay)")
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (default 16)")
    p.add_argument("--max-train", type=int, help="use only the first N training samples")
    p.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")

    p = sub.add_parser("dataset-steady", help="steady diffusion data for the two-source surrogate "
                       "(Toledo-Marín et al. 2021)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=2000, help="training samples (default 2000)")
    p.add_argument("--val", type=int, default=200, help="validation samples (default 200)")
    p.add_argument("--test", type=int, default=200, help="test samples (default 200)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's 20000 samples (16000 train, 4000 test) and 1000 for validation")
    p.add_argument("--shard-size", type=int, default=100, help="samples per file (default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted dataset in OUT")

    p = sub.add_parser("train-steady", help="train the steady diffusion surrogate (NN1 + NN2)")
    p.add_argument("--data", required=True, help="dataset folder (bodil dataset-steady)")
    p.add_argument("--out", required=True, help="weights file to write (.eqx); checkpoints go to OUT.checkpoints")
    p.add_argument("--epochs", type=int, default=50, help="epochs (default 50; the paper: 800)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--loss", choices=["mae", "mse"], default="mae", help="eq. 1 exponent 1 or 2 (default mae)")
    p.add_argument("--weight", type=float, default=100.0, help="w of the exponential weight (default 100)")
    p.add_argument("--p1", type=float, default=1.0, help="weight of NN1 (0: off; default 1)")
    p.add_argument("--p2", type=float, default=1.0, help="weight of NN2 (0: off; default 1)")
    p.add_argument("--dropout", type=float, nargs=4, default=[0.4, 0.4, 0.1, 0.1], metavar=("D1", "D2", "D3", "D4"),
                   help="dropout rates (default 0.4 0.4 0.1 0.1, the paper's model 9)")
    p.add_argument("--width-scale", type=float, default=1.0,
                   help="multiply NN2's channels (default 1: 64 ... 2048; 0.125 for CPU training)")
    p.add_argument("--no-output-norm", action="store_true",
                   help="leave out the batch norm after each network's last layer (Table 1 has it)")
    p.add_argument("--no-rollback", action="store_true", help="accept every epoch")
    p.add_argument("--max-train", type=int, help="use only the first N training samples")
    p.add_argument("--seed", type=int, default=0, help="initialisation, shuffling and dropout seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.checkpoints")

    args = parser.parse_args(argv)
    from .io import InputError

    _show_progress_messages()
    try:
        return {"ctv": ctv, "synth": synth, "demo": demo, "dataset": dataset,
                "train-surrogate": train_surrogate, "dataset-steady": dataset_steady,
                "train-steady": train_steady}[args.command](args)
    except InputError as err:
        print(f"bodil {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
