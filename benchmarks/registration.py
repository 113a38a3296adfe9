"""Accuracy and speed of the atlas registration that makes tissue maps from a patient's T1.

Each patient is the MNI152 atlas warped by a known random transform (``bodil.tumor.warped_patient``: affine,
smooth displacement, lesion with mass effect, bias field, noise), by default on the BraTS grid (240 x 240 x
155 at 1 mm, the 1 mm atlas). ``bodil.tumor.registration.register_atlas`` (default settings: affine on 4 mm,
SyN on 2 mm) recovers the maps; the table gives, per warp, the Dice of the hard labels (argmax of background,
CSF, GM, WM) against the truth outside the lesion (core + edema), for the registration and for its affine
stage alone, the similarity figure (NCC) and the wall and CPU time of the registration with the warping of the
maps. Targets of issue 19: WM Dice >= 0.85, GM >= 0.75, <= 3 min on 2 cores.

``--head`` gives the patients a head (``warped_patient(head=True)``: CSF, skull and scalp layers outside the
brain, scalp brighter than white matter) instead of a skull-stripped brain: the registration must then find
the brain itself (issue 19, item 1: skull-stripped and non-stripped T1 both work).

``--end-to-end`` also runs ``bodil ctv`` on the first patient twice, with the true maps and with ``--t1``, and
reports how far apart the CTV products are (voxels that differ, and the largest distance in voxels from a
differing voxel of one standard CTV to the other CTV).

Times depend on what else runs on the machine; the CPU time (``time.process_time``, all threads) less so.

    .venv/bin/python benchmarks/registration.py                      # 10 warps at 1 mm
    .venv/bin/python benchmarks/registration.py --warps 3 --spacing 2 --json reg.json
    .venv/bin/python benchmarks/registration.py --warps 1 --end-to-end
    .venv/bin/python benchmarks/registration.py --warps 3 --head                   # T1 with skull and scalp
    .venv/bin/python benchmarks/registration.py --warps 3 --spacing 2 --warp-mm 8 --warp-scale 25   # harder
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from scipy import ndimage

from bodil.tumor.anatomy import Anatomy, mni152
from bodil.tumor.registration import RegistrationSettings, register_atlas, resample
from bodil.tumor.warped_patient import tissue_dice, warped_patient, write_warped_patient


def affine_only(result, atlas: Anatomy, shape, affine) -> Anatomy:
    """The atlas maps through the affine stage alone (patient world -> atlas world)."""
    out = np.asarray(result.affine) @ affine
    return Anatomy(*(resample(getattr(atlas, k), atlas.affine, shape, out) for k in ("wm", "gm", "csf")),
                   affine=affine)


def one_warp(seed: int, spacing: float, settings: RegistrationSettings, **warp) -> dict:
    shape = tuple(int(round(s / spacing)) for s in (240, 240, 155))
    res = 1 if spacing < 2 else 2
    p = warped_patient(seed, shape=shape, spacing_mm=spacing, resolution=res, **warp)
    wall, cpu = time.perf_counter(), time.process_time()
    r = register_atlas(p.t1, p.lesion, settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    d = tissue_dice(p.anatomy, r.anatomy, ~p.lesion)
    da = tissue_dice(p.anatomy, affine_only(r, mni152(settings.atlas_resolution), shape, p.t1.affine), ~p.lesion)
    return {"seed": seed, "wm": d["wm"], "gm": d["gm"], "wm_affine": da["wm"], "gm_affine": da["gm"],
            "ncc": r.similarity["ncc"], "ncc_affine": r.similarity["ncc_affine"], "wall_s": wall, "cpu_s": cpu}


def end_to_end(spacing: float, extra: list[str]) -> dict:
    """``bodil ctv`` on warped patient 0 with the true maps and with ``--t1``; distances between products."""
    from bodil.cli import main
    import nibabel as nib

    shape = tuple(int(round(s / spacing)) for s in (240, 240, 155))
    p = warped_patient(0, shape=shape, spacing_mm=spacing, resolution=1 if spacing < 2 else 2)
    with tempfile.TemporaryDirectory() as tmp:
        f = write_warped_patient(p, os.path.join(tmp, "patient"))
        common = ["ctv", "--seg", f["seg"], "--labels", "brats2021", *extra]
        truth = ["--wm", f["wm"], "--gm", f["gm"], "--csf", f["csf"]]
        assert main([*common, *truth, "--out", os.path.join(tmp, "a")]) == 0
        t = time.perf_counter()
        assert main([*common, "--t1", f["t1"], "--out", os.path.join(tmp, "b")]) == 0
        wall = time.perf_counter() - t
        out = {"wall_t1_run_s": wall}
        for m in ("10mm", "15mm", "20mm"):
            for kind in ("standard", "model_map"):
                a, b = (np.asarray(nib.load(os.path.join(tmp, d, f"ctv_{kind}_{m}.nii.gz")).dataobj) > 0 for d in "ab")
                diff = a ^ b
                far = 0.0
                if diff.any():
                    far = max(float(ndimage.distance_transform_edt(~b)[a & ~b].max(initial=0)),
                              float(ndimage.distance_transform_edt(~a)[b & ~a].max(initial=0)))
                out[f"{kind}_{m}"] = {"differing_voxels": int(diff.sum()), "volume": int(a.sum()),
                                      "max_distance_vox": far}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warps", type=int, default=10, help="number of random warps (seeds 0..N-1)")
    ap.add_argument("--spacing", type=float, default=1.0, help="patient voxel size, mm (default 1: 240x240x155)")
    ap.add_argument("--syn-spacing", type=float, default=2.0, help="SyN working grid, mm (default 2)")
    ap.add_argument("--warp-mm", type=float, default=4.0, help="largest smooth displacement, mm (default 4)")
    ap.add_argument("--warp-scale", type=float, default=40.0, help="its lattice spacing, mm (default 40)")
    ap.add_argument("--head", action="store_true", help="patients with scalp, skull and CSF (not skull-stripped)")
    ap.add_argument("--end-to-end", action="store_true", help="also bodil ctv with true maps vs --t1")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    settings = RegistrationSettings(spacing_mm=args.syn_spacing, atlas_resolution=1 if args.spacing < 2 else 2)
    rows = []
    print(f"{'seed':>4} {'WM':>6} {'GM':>6} {'WM aff':>7} {'GM aff':>7} {'NCC':>6} {'NCC aff':>7} {'wall s':>7} "
          f"{'cpu s':>6}")
    for seed in range(args.warps):
        r = one_warp(seed, args.spacing, settings, warp_mm=args.warp_mm, warp_scale_mm=args.warp_scale,
                     head=args.head)
        rows.append(r)
        print(f"{r['seed']:4d} {r['wm']:6.3f} {r['gm']:6.3f} {r['wm_affine']:7.3f} {r['gm_affine']:7.3f} "
              f"{r['ncc']:6.3f} {r['ncc_affine']:7.3f} {r['wall_s']:7.1f} {r['cpu_s']:6.1f}", flush=True)
    for key in ("wm", "gm", "wall_s", "cpu_s") if rows else ():
        v = np.array([r[key] for r in rows])
        print(f"{key}: mean {v.mean():.3f}, min {v.min():.3f}, max {v.max():.3f}")
    result = {"spacing_mm": args.spacing, "syn_spacing_mm": args.syn_spacing, "warp_mm": args.warp_mm,
              "warp_scale_mm": args.warp_scale, "head": args.head, "rows": rows}
    if args.end_to_end:
        result["end_to_end"] = end_to_end(args.spacing, ["--grid", "16", "--time-points", "8", "--samples", "16"])
        print(json.dumps(result["end_to_end"], indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
