"""Clinician report of a posterior CTV ensemble: ``report.pdf`` and ``report.html``.

Pages of the PDF:

1. identification (patient, run settings), the table of CTV volumes and boundary spread per margin, the
   table of model parameters;
2. tri-planar slices (sagittal, coronal = "frontal", axial = "transverse") through the centre of mass of
   the core, one row per margin (three margins a page): tissue in grey, edema and core outlines, the
   standard CTV and the 5 / 50 / 95 % contours of the CTV probability, in world mm with the physical aspect
   ratio and the patient directions (L/R, A/P, S/I) read from the affine (RAS+ world, neurological view:
   the patient's right on the right of the axial and coronal panels);
3. histograms of the posterior initial tumour position (x, y, z in mm), with the truth and the MAP when
   given;
4. plain-language notes: what the uncertainty means, what the model assumes, notes from the run.

The HTML file holds the same tables and text, with the figures embedded as base64 PNG, so it is one
self-contained file. Figures are ``matplotlib.figure.Figure`` objects (never pyplot), so writing a report
changes no global matplotlib state. Both files are written to temporary names in ``out_dir`` and moved into
place only when both are complete: a failure leaves no new ``report.pdf`` or ``report.html`` behind.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import io
import itertools
import math
import os
import textwrap

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..io import atomic_path

A4 = (8.27, 11.69)  # inches, portrait
MARGINS_PER_PAGE = 3
LEVELS = (0.05, 0.5, 0.95)

# (key, header, format): the columns of the volume table; ``ctv.CTVEnsemble.table()`` gives these keys
TABLE_COLUMNS = (
    ("margin_mm", "Margin\n(mm)", "{:g}"),
    ("standard_volume_cm3", "Standard CTV\n(cm³)", "{:.1f}"),
    ("model_volume_cm3", "Model CTV\n(cm³)", "{:.1f}"),
    ("spread_median_mm", "Boundary spread\nmedian (mm)", "{:.1f}"),
    ("spread_p95_mm", "Boundary spread\n95 % (mm)", "{:.1f}"),
    ("dice_mean", "Dice\nmean", "{:.2f}"),
    ("dice_min", "Dice\nmin", "{:.2f}"),
)
PARAMETER_COLUMNS = (
    ("name", "Parameter", "{}"),
    ("unit", "Unit", "{}"),
    ("map", "MAP", "{:.4g}"),
    ("mean", "Mean", "{:.4g}"),
    ("q05", "5 %", "{:.4g}"),
    ("q95", "95 %", "{:.4g}"),
)

# Okabe-Ito colours (distinguishable with colour-vision deficiency)
COLOURS = {"edema": "#F0E442", "core": "#D55E00", "standard": "#009E73",
           0.05: "#56B4E9", 0.5: "#0072B2", 0.95: "#CC79A7", "samples": "#D55E00"}
WORLD_NEG, WORLD_POS = ("L", "P", "I"), ("R", "A", "S")
WORLD_NAMES = ("x", "y", "z")
# plane name -> (fixed world axis, horizontal world axis, vertical world axis)
PLANES = (("Sagittal", 0, 1, 2), ("Coronal (frontal)", 1, 0, 2), ("Axial (transverse)", 2, 0, 1))

RESEARCH_USE = ("Research use only. This is not a medical device and not a treatment plan: it must not be "
                "used for clinical decisions without independent review by qualified clinicians.")

MEANING = (
    "Each posterior sample is one plausible distribution of tumour cells that agrees with the image under "
    "the growth model. For every sample and every margin, the model CTV is the region of highest tumour-cell "
    "concentration with the same volume as the standard CTV of that margin.",
    "CTV probability of a voxel = the fraction of these plausible model runs whose CTV includes the voxel. "
    "The 95 % contour encloses voxels included by at least 95 % of the runs (almost surely in); the 50 % "
    "contour is the consensus; the 5 % contour is the outer envelope (voxels included by at least 5 % of "
    "the runs).",
    "Boundary spread is the mean distance (mm) between the CTV boundaries of two plausible runs (median and "
    "95th percentile over pairs of runs); Dice compares the overlap of two runs' CTVs (1 = identical).",
    "The uncertainty shown is the spread of plausible tumour-cell infiltration given the model and the "
    "image. Neighbouring voxels of a segmentation do not carry independent information, so the image is "
    "counted as one independent observation per cube of the error-correlation length (see the run "
    "settings), not one per voxel; this widens the spread to cover small errors of the segmentation and of "
    "the model's resolution. It does not cover gross errors: if the assumptions below do not hold, the true "
    "infiltration can lie outside all contours.",
)
ASSUMPTIONS = (
    "Tumour cells spread by Fisher-Kolmogorov growth: diffusion through brain tissue plus logistic "
    "proliferation.",
    "The diffusivity is constant within white matter (Dw) and within grey matter (Dg), with the ratio "
    "Dw/Dg fixed or inferred (see the parameters); there is no flux into cerebrospinal fluid or out of the brain.",
    "The tumour started from a single focus: a small Gaussian seed at an unknown initial position.",
    "Visible edema (FLAIR) and the core (T1c) are the regions where the concentration exceeds two "
    "thresholds, inferred with the other parameters.",
    "The segmentation is correct; the tumour has a single focus; no treatment effects (surgery, "
    "radiotherapy, chemotherapy) and no mass effect (tissue is not displaced by the tumour).",
)

REFERENCES = (
    "Tumour model, discretisation and CTV protocol: M. Balcerak et al., Individualizing glioma radiotherapy "
    "planning by optimization of data and physics-informed discrete loss. Nature Communications 16:5982 (2025).",
    "Posterior over the growth parameters (mode approximation, BASIS sampling, CTV ensembles): L. Amoudruz, "
    "S. Litvinov, C. Papadimitriou, P. Koumoutsakos, Bayesian Inference for PDE-based Inverse Problems using "
    "the Optimization of a Discrete Loss (2025); S. Wu et al., Bayesian annealed sequential importance "
    "sampling, ASCE-ASME J. Risk Uncertainty Eng. Syst. B 4(1):011008 (2018).",
)


# ---------------------------------------------------------------------------------------------- content
@dataclasses.dataclass
class ReportContent:
    """Everything a report shows. Arrays are on the input (NIfTI) grid, voxel axes as in the file.

    Attributes:
        patient_id: identifier printed on every page.
        run: run settings shown as a table (grid, samples, seed, label convention, input paths, created
            time, bodil/jax versions, ...); values are printed with ``str``.
        tissue: white + grey matter fraction in [0, 1] (the grey background).
        classes: segmentation, 0 healthy, 1 edema, 2 core (-1 = not observed is allowed).
        spacing: voxel size in mm (must agree with the affine's column norms).
        affine: 4 x 4 voxel-to-world matrix of the NIfTI file (RAS+ world, mm).
        margins_mm: the standard margins (mm).
        standard_ctv: margin -> boolean standard CTV.
        probability: margin -> voxelwise CTV probability in [0, 1].
        origin_samples: ``(S, 3)`` posterior initial tumour positions in world mm (x, y, z).
        table: one row per margin with the keys of ``TABLE_COLUMNS`` (``CTVEnsemble.table()``).
        parameters: rows with ``name``, ``unit``, ``map``, ``mean``, ``q05``, ``q95`` (missing -> "-").
        notes: extra notes, e.g. warnings from the run.
        origin_truth, origin_map: optional true / MAP initial positions (world mm).
    """

    patient_id: str
    run: dict
    tissue: np.ndarray
    classes: np.ndarray
    spacing: tuple
    affine: np.ndarray
    margins_mm: tuple
    standard_ctv: dict
    probability: dict
    origin_samples: np.ndarray
    table: list
    parameters: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    origin_truth: np.ndarray | None = None
    origin_map: np.ndarray | None = None

    @classmethod
    def from_ensemble(cls, ensemble, *, patient_id: str, run: dict, tissue, classes, affine, origin_samples,
                      parameters=(), notes=(), origin_truth=None, origin_map=None) -> "ReportContent":
        """Content from a ``bodil.tumor.ctv.CTVEnsemble`` computed on the same (input) grid."""
        return cls(patient_id=patient_id, run=dict(run), tissue=tissue, classes=classes,
                   spacing=tuple(ensemble.spacing), affine=affine, margins_mm=tuple(ensemble.margins_mm),
                   standard_ctv={m: ensemble[m].standard for m in ensemble.margins_mm},
                   probability={m: ensemble[m].probability for m in ensemble.margins_mm},
                   origin_samples=origin_samples, table=ensemble.table(), parameters=list(parameters),
                   notes=list(notes), origin_truth=origin_truth, origin_map=origin_map)

    def validate(self) -> None:
        """Raise ``ValueError`` (saying what is wrong) unless the content can be drawn."""
        err = "ReportContent: "
        if not isinstance(self.patient_id, str) or not self.patient_id.strip():
            raise ValueError(err + f"patient_id must be a non-empty string, got {self.patient_id!r}.")
        if not isinstance(self.run, dict):
            raise ValueError(err + f"run must be a dict of settings, got {type(self.run).__name__}.")
        tissue = np.asarray(self.tissue)
        if tissue.ndim != 3:
            raise ValueError(err + f"tissue must be a 3-D array, got shape {tissue.shape}.")
        if not np.issubdtype(tissue.dtype, np.number) or not np.all(np.isfinite(tissue)):
            raise ValueError(err + "tissue must be finite numbers (the white + grey matter fraction).")
        shape = tissue.shape
        classes = np.asarray(self.classes)
        if classes.shape != shape:
            raise ValueError(err + f"classes has shape {classes.shape} but tissue has {shape}; use one grid.")
        if not np.all(np.isin(classes, (-1, 0, 1, 2))):
            raise ValueError(err + "classes must hold 0 (healthy), 1 (edema), 2 (core) or -1 (not observed); "
                             "convert the label convention first (bodil.tumor.segmentation).")
        spacing = np.asarray(self.spacing, dtype=float)
        if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ValueError(err + f"spacing must be three positive voxel sizes in mm, got {self.spacing}.")
        affine = np.asarray(self.affine, dtype=float)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) == 0:
            raise ValueError(err + "affine must be a finite, invertible 4 x 4 voxel-to-world matrix.")
        norms = np.linalg.norm(affine[:3, :3], axis=0)
        if not np.allclose(norms, spacing, rtol=1e-3):
            raise ValueError(err + f"spacing {tuple(spacing)} disagrees with the affine's voxel sizes "
                             f"{tuple(np.round(norms, 4))}; take both from the same NIfTI header.")
        margins = tuple(self.margins_mm)
        if not margins:
            raise ValueError(err + "margins_mm is empty; give at least one margin.")
        for name, maps in (("standard_ctv", self.standard_ctv), ("probability", self.probability)):
            for m in margins:
                m_text = f"{m:g}" if isinstance(m, (int, float, np.number)) else repr(m)
                if m not in maps:
                    raise ValueError(err + f"{name} has no entry for the {m_text} mm margin (keys {list(maps)}).")
                arr = np.asarray(maps[m])
                if arr.shape != shape:
                    raise ValueError(err + f"{name}[{m_text}] has shape {arr.shape} but tissue has {shape}.")
                if name == "probability" and (not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1):
                    raise ValueError(err + f"probability[{m_text}] must lie in [0, 1].")
        origins = np.asarray(self.origin_samples, dtype=float)
        if origins.ndim != 2 or origins.shape[1] != 3 or len(origins) == 0 or not np.all(np.isfinite(origins)):
            raise ValueError(err + f"origin_samples must be a finite (S, 3) array of world positions in mm, "
                             f"got shape {origins.shape}.")
        for name in ("origin_truth", "origin_map"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != (3,):
                raise ValueError(err + f"{name} must be a world position (x, y, z) in mm, got {value!r}.")
        if not isinstance(self.table, (list, tuple)) or not self.table:
            raise ValueError(err + "table must be a non-empty list of rows (one per margin).")
        for row in self.table:
            missing = [key for key, _, _ in TABLE_COLUMNS if key not in row]
            if missing:
                raise ValueError(err + f"a table row lacks {missing}; rows need the keys "
                                 f"{[k for k, _, _ in TABLE_COLUMNS]} (see CTVEnsemble.table()).")
        for row in self.parameters:
            if "name" not in row:
                raise ValueError(err + f"every parameter row needs a 'name', got {row!r}.")
        if any(not isinstance(n, str) for n in self.notes):
            raise ValueError(err + "notes must be strings.")


# ---------------------------------------------------------------------------------------------- geometry
def _world_axes(affine: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """For each world axis (x, y, z): the voxel axis closest to it and the direction (+1/-1) of increasing
    index along it (the permutation maximising the alignment, as nibabel's ``io_orientation``)."""
    m = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(m[w, p[w]]) for w in range(3)))
    signs = tuple(1 if m[w, best[w]] >= 0 else -1 for w in range(3))
    return tuple(best), signs


def _centre_index(classes: np.ndarray) -> tuple[int, ...]:
    """Voxel index of the centre of mass of the core (else of the lesion, else the volume's centre)."""
    for mask in (classes == 2, classes >= 1):
        if mask.any():
            return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))
    return tuple(n // 2 for n in classes.shape)


class _Plane:
    """One slice through ``index`` perpendicular to world axis ``fixed``, drawn with world axis ``h``
    increasing to the right and world axis ``v`` increasing upwards, in world mm."""

    def __init__(self, content: ReportContent, fixed: int, h: int, v: int, index):
        affine = np.asarray(content.affine, dtype=float)
        axes, signs = _world_axes(affine)
        self.axes, self.signs, self.fixed, self.h, self.v = axes, signs, fixed, h, v
        slicer = [slice(None)] * 3
        slicer[axes[fixed]] = index[axes[fixed]]
        self.slicer = tuple(slicer)
        centre = affine[:3, :3] @ np.asarray(index, float) + affine[:3, 3]
        self.position_mm = float(centre[fixed])
        shape = np.shape(content.tissue)
        self.coords = []
        for w in (h, v):
            a = axes[w]
            n = shape[a]
            step = affine[w, a]
            # world coordinate of the voxel centres along the in-plane voxel axis through ``index``
            at = affine[w, :3] @ np.asarray(index, float) + affine[w, 3] - step * index[a]
            c = at + step * np.arange(n)
            self.coords.append(c[::-1] if step < 0 else c)
        self.extent = []
        for c in self.coords:
            half = 0.5 * (abs(c[1] - c[0]) if c.size > 1 else 1.0)
            self.extent += [float(c[0] - half), float(c[-1] + half)]

    def take(self, volume) -> np.ndarray:
        """The slice as an image ``[row = v, column = h]`` oriented like ``coords``."""
        img = np.asarray(volume)[self.slicer]
        remaining = [a for a in range(3) if a != self.axes[self.fixed]]
        ah, av = self.axes[self.h], self.axes[self.v]
        img = np.transpose(img, (remaining.index(av), remaining.index(ah)))
        if self.signs[self.v] < 0:
            img = img[::-1, :]
        if self.signs[self.h] < 0:
            img = img[:, ::-1]
        return img


def _outline(ax, plane: _Plane, mask2d: np.ndarray, colour: str, style: str = "-", width: float = 1.0):
    """Outline of a boolean image (nothing when it is empty or full)."""
    if mask2d.any() and not mask2d.all():
        ax.contour(plane.coords[0], plane.coords[1], mask2d.astype(float), levels=[0.5], colors=[colour],
                   linestyles=[style], linewidths=[width])


def _draw_panel(ax, content: ReportContent, plane: _Plane, title: str, margin):
    ax.imshow(plane.take(content.tissue), cmap="gray", vmin=0.0, vmax=1.0, origin="lower",
              extent=plane.extent, interpolation="nearest", aspect="equal")
    classes = plane.take(content.classes)
    _outline(ax, plane, classes >= 1, COLOURS["edema"], width=0.8)
    _outline(ax, plane, classes == 2, COLOURS["core"], width=0.8)
    _outline(ax, plane, plane.take(content.standard_ctv[margin]).astype(bool), COLOURS["standard"], "--", 1.0)
    prob = plane.take(content.probability[margin])
    for level in LEVELS:
        _outline(ax, plane, prob >= level - 1e-12, COLOURS[level], "-", 1.0)
    origins = np.asarray(content.origin_samples, float)
    ax.plot(origins[:, plane.h], origins[:, plane.v], ".", ms=1.5, color=COLOURS["samples"], alpha=0.5)
    ax.set_xlim(plane.extent[:2])
    ax.set_ylim(plane.extent[2:])
    ax.set_title(f"{title}, {WORLD_NAMES[plane.fixed]} = {plane.position_mm:.1f} mm", fontsize=7)
    ax.tick_params(labelsize=5, length=2)
    box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7}
    for text, xy, ha, va in ((WORLD_NEG[plane.h], (0.01, 0.5), "left", "center"),
                             (WORLD_POS[plane.h], (0.99, 0.5), "right", "center"),
                             (WORLD_NEG[plane.v], (0.5, 0.01), "center", "bottom"),
                             (WORLD_POS[plane.v], (0.5, 0.99), "center", "top")):
        ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, fontsize=7, fontweight="bold", bbox=box)


# ---------------------------------------------------------------------------------------------- pages
def _footer(fig: Figure, content: ReportContent, page: str):
    fig.text(0.5, 0.015, f"Patient {content.patient_id}  |  {page}  |  research use only, not a medical device",
             ha="center", va="bottom", fontsize=7, color="0.35")


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return "n/a"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def _rows(rows, columns) -> list[list[str]]:
    return [[_fmt(row.get(key), spec) for key, _, spec in columns] for row in rows]


def _run_items(content: ReportContent) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in content.run.items()]


def _bodil_version() -> str:
    import bodil

    return getattr(bodil, "__version__", "unknown")


def _title_page(content: ReportContent, written: str) -> Figure:
    fig = Figure(figsize=A4)
    fig.text(0.07, 0.955, "Tumour-cell infiltration and clinical target volumes", fontsize=15, fontweight="bold")
    fig.text(0.07, 0.932, f"Patient {content.patient_id}   |   report written {written}   |   bodil "
             f"{_bodil_version()}", fontsize=9)
    fig.text(0.07, 0.905, textwrap.fill(RESEARCH_USE, 100), fontsize=8, color="#B00000", va="top")
    lines = [f"{k}: {v}" for k, v in _run_items(content)]
    wrapped = []
    for line in lines:
        wrapped += textwrap.wrap(line, 110, subsequent_indent="    ") or [""]
    if len(wrapped) > 22:
        wrapped = wrapped[:21] + ["... (all settings in report.html)"]
    fig.text(0.07, 0.86, "Run", fontsize=10, fontweight="bold", va="top")
    fig.text(0.07, 0.84, "\n".join(wrapped), fontsize=7, family="monospace", va="top", linespacing=1.35)

    ax = fig.add_axes((0.07, 0.40, 0.86, 0.16))
    ax.axis("off")
    ax.set_title("CTV volume and boundary spread per margin (model CTV of the standard volume)", fontsize=10,
                 fontweight="bold", loc="left")
    table = ax.table(cellText=_rows(content.table, TABLE_COLUMNS), colLabels=[c[1] for c in TABLE_COLUMNS],
                     loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.5)
    for (r, _), cell in table.get_celld().items():
        if r == 0:
            cell.set_height(cell.get_height() * 1.6)
            cell.set_facecolor("#E8E8E8")

    ax = fig.add_axes((0.07, 0.08, 0.86, 0.26))
    ax.axis("off")
    ax.set_title("Model parameters (posterior)", fontsize=10, fontweight="bold", loc="left")
    if content.parameters:
        table = ax.table(cellText=_rows(content.parameters, PARAMETER_COLUMNS),
                         colLabels=[c[1] for c in PARAMETER_COLUMNS], loc="upper center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1.0, 1.3)
        for (r, _), cell in table.get_celld().items():
            if r == 0:
                cell.set_facecolor("#E8E8E8")
    else:
        ax.text(0.0, 0.9, "(no parameter summary given)", fontsize=8, transform=ax.transAxes)
    _footer(fig, content, "summary")
    return fig


def _slice_page(content: ReportContent, margins, page: str) -> Figure:
    fig = Figure(figsize=A4)
    index = _centre_index(np.asarray(content.classes))
    planes = [(_Plane(content, fixed, h, v, index), name) for name, fixed, h, v in PLANES]
    fig.text(0.5, 0.975, "CTV probability: slices through the centre of mass of the core", ha="center",
             va="top", fontsize=11, fontweight="bold")
    rows = len(margins)
    top, bottom = 0.93, 0.12
    height = (top - bottom) / MARGINS_PER_PAGE
    for r, margin in enumerate(margins):
        for c, (plane, name) in enumerate(planes):
            ax = fig.add_axes((0.075 + c * 0.315, top - (r + 1) * height + 0.02, 0.26, height - 0.045))
            _draw_panel(ax, content, plane, name, margin)
            if c == 0:
                ax.set_ylabel(f"{margin:g} mm margin\n{WORLD_NAMES[plane.v]} (mm)", fontsize=8)
            else:
                ax.set_ylabel(f"{WORLD_NAMES[plane.v]} (mm)", fontsize=6)
            ax.set_xlabel(f"{WORLD_NAMES[plane.h]} (mm)", fontsize=6)
    handles = [Line2D([], [], color=COLOURS["edema"], lw=1.5, label="edema (segmentation)"),
               Line2D([], [], color=COLOURS["core"], lw=1.5, label="core (segmentation)"),
               Line2D([], [], color=COLOURS["standard"], lw=1.5, ls="--", label="standard CTV (margin)"),
               Line2D([], [], color=COLOURS[0.05], lw=1.5, label="CTV probability >= 5 % (outer envelope)"),
               Line2D([], [], color=COLOURS[0.5], lw=1.5, label="CTV probability >= 50 % (consensus)"),
               Line2D([], [], color=COLOURS[0.95], lw=1.5, label="CTV probability >= 95 % (almost surely in)"),
               Line2D([], [], color=COLOURS["samples"], marker=".", ls="none", label="initial positions (samples)")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.03 + (MARGINS_PER_PAGE - rows) * height))
    _footer(fig, content, page)
    return fig


def _histogram_page(content: ReportContent) -> Figure:
    fig = Figure(figsize=A4)
    fig.text(0.5, 0.965, "Initial tumour position: posterior samples", ha="center", va="top", fontsize=11,
             fontweight="bold")
    origins = np.asarray(content.origin_samples, float)
    truth = None if content.origin_truth is None else np.asarray(content.origin_truth, float)
    best = None if content.origin_map is None else np.asarray(content.origin_map, float)
    for w in range(3):
        ax = fig.add_axes((0.12, 0.68 - w * 0.29, 0.78, 0.22))
        values = origins[:, w]
        bins = min(40, max(5, int(np.sqrt(len(values))) + 1))
        if np.ptp(values) == 0:
            bins = 1
        ax.hist(values, bins=bins, color="0.6", edgecolor="0.3")
        if truth is not None:
            ax.axvline(truth[w], color="black", ls="--", lw=1.5, label=f"truth {truth[w]:.1f} mm")
        if best is not None:
            ax.axvline(best[w], color=COLOURS["core"], lw=1.5, label=f"MAP {best[w]:.1f} mm")
        lo, hi = np.percentile(values, [5, 95])
        ax.set_title(f"{WORLD_NAMES[w]} ({WORLD_NEG[w]} - / {WORLD_POS[w]} +): mean {values.mean():.1f} mm, "
                     f"sd {values.std():.1f} mm, 90 % interval [{lo:.1f}, {hi:.1f}] mm", fontsize=8)
        ax.set_xlabel(f"{WORLD_NAMES[w]} (world mm)", fontsize=8)
        ax.set_ylabel("samples", fontsize=8)
        ax.tick_params(labelsize=7)
        if truth is not None or best is not None:
            ax.legend(fontsize=7)
    fig.text(0.12, 0.04, f"{len(origins)} posterior samples. World coordinates from the image affine (RAS+: x "
             f"towards the patient's right, y anterior, z superior).", fontsize=7)
    _footer(fig, content, "initial position")
    return fig


def _note_lines(content: ReportContent) -> list[tuple[str, str]]:
    """(style, text) lines of the notes pages."""
    lines: list[tuple[str, str]] = [("h1", "How to read this report")]
    sections = (("What the uncertainty means", MEANING), ("What the model assumes", ASSUMPTIONS),
                ("Notes from the run", tuple(content.notes) or ("(none)",)), ("References", REFERENCES))
    for head, paragraphs in sections:
        lines.append(("h2", head))
        for p in paragraphs:
            wrapped = textwrap.wrap(p, 105)
            lines += [("p", ("- " if i == 0 else "  ") + t) for i, t in enumerate(wrapped)]
            lines.append(("gap", ""))
    lines += [("h2", "Research use"), *[("warn", t) for t in textwrap.wrap(RESEARCH_USE, 105)]]
    return lines


def _note_pages(content: ReportContent) -> list[Figure]:
    step = {"h1": 0.04, "h2": 0.032, "p": 0.017, "warn": 0.017, "gap": 0.008}
    style = {"h1": {"fontsize": 13, "fontweight": "bold"}, "h2": {"fontsize": 10, "fontweight": "bold"},
             "p": {"fontsize": 8.5}, "warn": {"fontsize": 8.5, "color": "#B00000"}, "gap": {}}
    figures, fig, y = [], None, 0.0
    for kind, text in _note_lines(content):
        if fig is None or y - step[kind] < 0.06:
            fig = Figure(figsize=A4)
            figures.append(fig)
            y = 0.97
        y -= step[kind]
        if text:
            fig.text(0.07, y, text, va="baseline", **style[kind])
    for fig in figures:
        _footer(fig, content, "notes")
    return figures


# ---------------------------------------------------------------------------------------------- html
def _png(fig: Figure, dpi: int = 110) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h).replace(chr(10), '<br>')}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(content: ReportContent, written: str, images: list[tuple[str, str]]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>CTV report: patient {e(content.patient_id)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #999;padding:0.2em 0.6em;"
        "text-align:center}th{background:#e8e8e8}.warn{color:#b00000;font-weight:bold}"
        "img{max-width:100%;border:1px solid #ccc}td.key{text-align:left;font-weight:bold}"
        "td.value{text-align:left;font-family:monospace}</style></head><body>",
        "<h1>Tumour-cell infiltration and clinical target volumes</h1>",
        f"<p>Patient <b>{e(content.patient_id)}</b>, report written {e(written)}, bodil {e(_bodil_version())}.</p>",
        f'<p class="warn">{e(RESEARCH_USE)}</p>',
        "<h2>Run</h2><table>" + "".join(f'<tr><td class="key">{e(k)}</td><td class="value">{e(v)}</td></tr>'
                                        for k, v in _run_items(content)) + "</table>",
        "<h2>CTV volume and boundary spread per margin</h2>",
        "<p>The model CTV of each sample has the volume of the standard CTV of the margin.</p>",
        _html_table([c[1] for c in TABLE_COLUMNS], _rows(content.table, TABLE_COLUMNS)),
        "<h2>Model parameters (posterior)</h2>",
        (_html_table([c[1] for c in PARAMETER_COLUMNS], _rows(content.parameters, PARAMETER_COLUMNS))
         if content.parameters else "<p>(no parameter summary given)</p>"),
    ]
    for title, data in images:
        parts.append(f"<h2>{e(title)}</h2>")
        parts.append(f'<img alt="{e(title)}" src="data:image/png;base64,{data}">')
    for head, paragraphs in (("What the uncertainty means", MEANING), ("What the model assumes", ASSUMPTIONS),
                             ("Notes from the run", tuple(content.notes) or ("(none)",)),
                             ("References", REFERENCES)):
        parts.append(f"<h2>{e(head)}</h2><ul>" + "".join(f"<li>{e(p)}</li>" for p in paragraphs) + "</ul>")
    parts.append(f'<p class="warn">{e(RESEARCH_USE)}</p></body></html>')
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- writing
def write_report(content: ReportContent, out_dir) -> tuple[str, str]:
    """Write ``report.pdf`` and ``report.html`` into ``out_dir`` (created if missing).

    Both are rendered to temporary files in ``out_dir`` (``bodil.io.atomic_path``) and moved into place only
    when both are complete; on any error the temporary files are removed and the exception propagates.

    Returns:
        ``(pdf_path, html_path)``.
    """
    content.validate()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    pdf_path = os.path.join(out_dir, "report.pdf")
    html_path = os.path.join(out_dir, "report.html")
    written = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    with atomic_path(pdf_path, ".pdf") as tmp_pdf, atomic_path(html_path, ".html") as tmp_html:
        images = []
        metadata = {"Title": f"CTV report, patient {content.patient_id}", "Creator": f"bodil {_bodil_version()}",
                    "Subject": "Posterior clinical target volumes (research use only)"}
        with PdfPages(tmp_pdf, metadata=metadata) as pdf:
            pdf.savefig(_title_page(content, written))
            margins = tuple(content.margins_mm)
            groups = [margins[i:i + MARGINS_PER_PAGE] for i in range(0, len(margins), MARGINS_PER_PAGE)]
            for g, group in enumerate(groups):
                page = f"slices {g + 1}/{len(groups)}"
                fig = _slice_page(content, group, page)
                pdf.savefig(fig)
                names = ", ".join(f"{m:g}" for m in group)
                images.append((f"Slices through the core, margins {names} mm", _png(fig)))
            fig = _histogram_page(content)
            pdf.savefig(fig)
            images.append(("Initial tumour position", _png(fig)))
            for fig in _note_pages(content):
                pdf.savefig(fig)
        with open(tmp_html, "w", encoding="utf-8") as f:
            f.write(_html(content, written, images))
    return pdf_path, html_path
