"""The patient's T1 as ``bodil ctv --t1`` takes it: checked against the segmentation, registered to the atlas
(``bodil.tumor.registration``), and the warped maps, the similarity figure and a three-plane quality-control
figure handed to ``bodil.tumor.run_ctv`` (``NativeTissue``), which writes them into the run's folder.

The T1 may lie on another grid than the segmentation when both share the world space (the scanner frame of
one session): it is then resampled (linearly) onto the segmentation's grid. It is refused (``InputError``)
when its field of view misses part of the tumour (the message names both affines), when it is empty or
constant, or when it is 0 over most of the tumour.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import nibabel as nib
import numpy as np

from ..io import InputError, Volume, load_nifti, save_nifti
from ..progress import ProgressMeter
from .registration import (POOR_REGISTRATION_NCC, RegistrationResult, RegistrationSettings, check_image,
                           register_atlas, resample)
from .segmentation import Segmentation

log = logging.getLogger(__name__)


def _affine_text(a) -> str:
    return np.array2string(np.asarray(a, float), precision=3, suppress_small=True)


def t1_on_segmentation_grid(t1: Volume, seg: Segmentation, what: str = "T1") -> Volume:
    """``t1`` on ``seg``'s grid: itself when the grids agree, else resampled when its field of view holds the
    whole tumour (core and edema) in world coordinates.

    Raises:
        InputError: constant/empty image; the field of view misses (part of) the tumour, naming both affines;
            the image is 0 over most of the tumour.
    """
    check_image(t1.data, what)
    where = f" ({t1.path})" if t1.path else ""
    same = t1.shape == seg.shape and np.allclose(t1.affine, seg.affine, rtol=0.0, atol=1e-3)
    if not same:
        idx = np.argwhere(seg.tumor).T.astype(float)
        world = seg.affine[:3, :3] @ idx + seg.affine[:3, 3][:, None]
        vox = np.linalg.solve(t1.affine[:3, :3], world - t1.affine[:3, 3][:, None])
        inside = np.all((vox >= -0.5) & (vox <= np.asarray(t1.shape)[:, None] - 0.5), axis=0)
        if not inside.all():
            share = ("no part of it" if not inside.any() else f"{100 * (1 - inside.mean()):.0f}% of it outside")
            raise InputError(f"{what}{where} does not cover the tumour of the segmentation ({seg.path or 'given'}) "
                             f"in world coordinates ({share}); the two images do not share one world space or "
                             f"the {what}'s field of view misses the tumour.\n{what} affine (shape {t1.shape}):\n"
                             f"{_affine_text(t1.affine)}\nsegmentation affine (shape {seg.shape}):\n"
                             f"{_affine_text(seg.affine)}\nGive images of one session (same scanner frame), or "
                             f"register them onto one grid first.")
        log.info(f"{what} on another grid than the segmentation: resampled onto the segmentation's grid")
        t1 = Volume(resample(t1.data, t1.affine, seg.shape, seg.affine, order=1), np.asarray(seg.affine, float),
                    t1.path)
        check_image(t1.data, f"{what} resampled onto the segmentation's grid")
    signal = t1.data[seg.tumor] > 0.01 * float(np.max(np.abs(t1.data)))
    if signal.mean() < 0.5:
        raise InputError(f"{what}{where} is 0 (background) over {100 * (1 - signal.mean()):.0f}% of the tumour; "
                         f"its field of view or brain mask misses the tumour. Give the T1 of this segmentation.")
    return t1


@dataclasses.dataclass(frozen=True, eq=False)
class NativeTissue:
    """Tissue maps made from the patient's T1, with what the run's folder, summary and report need.

    ``write(folder)`` writes ``wm.nii.gz``, ``gm.nii.gz``, ``csf.nii.gz``, ``brain_mask.nii.gz`` and
    ``registration_qc.png``; ``summary`` is the ``registration`` entry of ``summary.json``; ``notes`` the
    warnings for the report's first page.
    """

    t1: Volume
    lesion: np.ndarray
    result: RegistrationResult

    @property
    def anatomy(self):
        return self.result.anatomy

    @property
    def summary(self) -> dict:
        r = self.result
        in_brain = float(r.anatomy.brain[self.lesion].mean()) if self.lesion.any() else 1.0
        return {"method": "MNI152 2009 (nilearn) -> T1: dipy affine (mutual information) + SyN (cross-correlation), "
                          "lesion excluded", "similarity": r.similarity, "tumour_in_brain_fraction": in_brain,
                "affine_patient_to_atlas": np.asarray(r.affine).tolist(), "wall_s": round(r.wall_s, 1)}

    @property
    def notes(self) -> list[str]:
        sim, out = self.result.similarity, []
        if self.result.poor:
            out.append(f"The atlas registration to the T1 is poor (local NCC {sim['local_ncc']:.2f} < "
                       f"{POOR_REGISTRATION_NCC}, "
                       f"brain outside the lesion): the tissue maps, and so the model's CTVs, may be wrong. Check "
                       f"registration_qc.png, or give tissue maps (--wm/--gm).")
        if self.summary["tumour_in_brain_fraction"] < 0.9:
            out.append(f"Only {100 * self.summary['tumour_in_brain_fraction']:.0f}% of the tumour lies inside the "
                       f"registered atlas's brain mask; check registration_qc.png.")
        return out

    def write(self, folder) -> dict:
        a, files = self.t1.affine, {}
        for name in ("wm", "gm", "csf"):
            files[name] = save_nifti(os.path.join(folder, f"{name}.nii.gz"), getattr(self.anatomy, name), a)
        files["brain_mask"] = save_nifti(os.path.join(folder, "brain_mask.nii.gz"), self.anatomy.brain, a,
                                         dtype=np.uint8)
        files["registration_qc"] = qc_figure(self, os.path.join(folder, "registration_qc.png"))
        return files


def check_sequences(paths: dict) -> dict:
    """``{name: path}`` of the given sequences (``None`` dropped), each checked to be a readable, non-constant
    3-D image (``InputError`` otherwise); they are recorded, and only the T1 is used."""
    out = {k: v for k, v in paths.items() if v}
    for key, path in out.items():
        check_image(load_nifti(path, what=key.upper()).data, f"{key.upper()} ({path})")
    return out


def native_tissue(t1, seg: Segmentation, settings: RegistrationSettings = RegistrationSettings(),
                  progress: bool | ProgressMeter = False) -> NativeTissue:
    """Register the atlas to ``t1`` (path or ``Volume``) with ``seg``'s tumour left out; the maps on ``seg``'s
    grid. Nothing is written (``run_ctv(..., registration=...)`` writes the files)."""
    if not isinstance(t1, Volume):
        t1 = load_nifti(t1, what="T1")
    t1 = t1_on_segmentation_grid(t1, seg)
    log.info("tissue maps: registering the MNI152 atlas to the T1 (affine, then SyN; the tumour left out)")
    result = register_atlas(t1, seg.tumor, settings, progress)
    return NativeTissue(t1, np.asarray(seg.tumor, bool), result)


def _canonical(arr, affine):
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(np.asarray(arr), ornt)


def qc_figure(native: NativeTissue, path: str) -> str:
    """``qc_plot`` saved as a PNG at ``path``; returns ``path``."""
    qc_plot(native).savefig(path, dpi=100)
    return path


def qc_plot(native: NativeTissue):
    """Three planes (axial, coronal, sagittal; RAS) through the tumour's centre: the T1 in grey, the warped
    atlas's GM (yellow) and WM (cyan) 0.5 outlines and the tumour (red); the similarity in the title."""
    from matplotlib.figure import Figure

    a = native.t1.affine
    t1, gm, wm, les = (_canonical(x, a) for x in (native.t1.data, native.anatomy.gm, native.anatomy.wm,
                                                    native.lesion.astype(float)))
    centre = (np.argwhere(les > 0.5).mean(axis=0) if les.any() else 0.5 * np.asarray(t1.shape)).round().astype(int)
    top = float(np.percentile(t1[t1 > 0], 99.5)) if np.any(t1 > 0) else 1.0
    sp = np.empty(3)
    sp[nib.orientations.io_orientation(a)[:, 0].astype(int)] = np.linalg.norm(np.asarray(a)[:3, :3], axis=0)
    fig = Figure(figsize=(12, 4.6))
    sim = native.result.similarity
    fig.suptitle(f"Atlas registration: local NCC {sim['local_ncc']:.3f} (affine only {sim['local_ncc_affine']:.3f}); "
                 f"GM yellow, "
                 f"WM cyan, tumour red", fontsize=11)
    for k, (axis, name) in enumerate(((2, "axial"), (1, "coronal"), (0, "sagittal"))):
        ax = fig.add_subplot(1, 3, k + 1)
        sl = [slice(None)] * 3
        sl[axis] = int(np.clip(centre[axis], 0, t1.shape[axis] - 1))

        def plane(x):
            return np.asarray(x[tuple(sl)]).T

        cols, rows = [i for i in range(3) if i != axis]
        ax.imshow(plane(t1), cmap="gray", vmin=0, vmax=top, origin="lower", aspect=sp[rows] / sp[cols])
        for field, colour in ((gm, "#FFD700"), (wm, "#00CED1"), (les, "#FF2020")):
            p = plane(field)
            if p.min() < 0.5 < p.max():
                ax.contour(p, levels=[0.5], colors=colour, linewidths=0.7)
        ax.set_title(name)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


__all__ = ["NativeTissue", "check_sequences", "native_tissue", "qc_figure", "qc_plot", "t1_on_segmentation_grid"]
