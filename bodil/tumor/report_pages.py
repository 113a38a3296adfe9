"""The pages of the clinician report's PDF, as ``matplotlib.figure.Figure`` objects (never pyplot, so drawing
changes no global matplotlib state).

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
"""

from __future__ import annotations

import itertools
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .ensemble import LEVELS
from .report_content import (MEANING, PARAMETER_COLUMNS, REFERENCES, RESEARCH_USE, TABLE_COLUMNS,
                             ReportContent, bodil_version, run_items, table_rows)
from .segmentation import CORE, EDEMA

A4 = (8.27, 11.69)  # inches, portrait
MARGINS_PER_PAGE = 3
# Okabe-Ito colours (distinguishable with colour-vision deficiency)
COLOURS = {"edema": "#F0E442", "core": "#D55E00", "standard": "#009E73",
           0.05: "#56B4E9", 0.5: "#0072B2", 0.95: "#CC79A7", "samples": "#D55E00"}
WORLD_NEG, WORLD_POS = ("L", "P", "I"), ("R", "A", "S")
WORLD_NAMES = ("x", "y", "z")
# plane name -> (fixed world axis, horizontal world axis, vertical world axis)
PLANES = (("Sagittal", 0, 1, 2), ("Coronal (frontal)", 1, 0, 2), ("Axial (transverse)", 2, 0, 1))


def _world_axes(affine: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """For each world axis (x, y, z): the voxel axis closest to it and the direction (+1/-1) of increasing
    index along it (the permutation maximising the alignment, as nibabel's ``io_orientation``)."""
    m = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(m[w, p[w]]) for w in range(3)))
    signs = tuple(1 if m[w, best[w]] >= 0 else -1 for w in range(3))
    return tuple(best), signs


def centre_index(classes: np.ndarray) -> tuple[int, ...]:
    """Voxel index of the centre of mass of the core (else of the lesion, else the volume's centre)."""
    for mask in (classes == CORE, np.isin(classes, (EDEMA, CORE))):
        if mask.any():
            return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))
    return tuple(n // 2 for n in classes.shape)


class Plane:
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


def _outline(ax, plane: Plane, mask2d: np.ndarray, colour: str, style: str = "-", width: float = 1.0):
    """Outline of a boolean image (nothing when it is empty or full)."""
    if mask2d.any() and not mask2d.all():
        ax.contour(plane.coords[0], plane.coords[1], mask2d.astype(float), levels=[0.5], colors=[colour],
                   linestyles=[style], linewidths=[width])


def _draw_panel(ax, content: ReportContent, plane: Plane, title: str, margin):
    ax.imshow(plane.take(content.tissue), cmap="gray", vmin=0.0, vmax=1.0, origin="lower",
              extent=plane.extent, interpolation="nearest", aspect="equal")
    classes = plane.take(content.classes)
    _outline(ax, plane, np.isin(classes, (EDEMA, CORE)), COLOURS["edema"], width=0.8)
    _outline(ax, plane, classes == CORE, COLOURS["core"], width=0.8)
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


def _footer(fig: Figure, content: ReportContent, page: str):
    fig.text(0.5, 0.015, f"Patient {content.patient_id}  |  {page}  |  research use only, not a medical device",
             ha="center", va="bottom", fontsize=7, color="0.35")


def title_page(content: ReportContent, written: str) -> Figure:
    """Page 1: identification, run settings, the CTV table and the parameter table."""
    fig = Figure(figsize=A4)
    fig.text(0.07, 0.955, "Tumour-cell infiltration and clinical target volumes", fontsize=15, fontweight="bold")
    fig.text(0.07, 0.932, f"Patient {content.patient_id}   |   report written {written}   |   bodil "
             f"{bodil_version()}", fontsize=9)
    fig.text(0.07, 0.905, textwrap.fill(RESEARCH_USE, 100), fontsize=8, color="#B00000", va="top")
    warnings = [t for note in content.notes for t in textwrap.wrap(f"Warning: {note}", 98)]
    if warnings:  # what the reader must know before trusting the numbers (an unconverged solve...)
        fig.text(0.07, 0.875, "\n".join(warnings), fontsize=8, fontweight="bold", color="#B00000", va="top",
                 linespacing=1.3)
    top = 0.86 - 0.0135 * len(warnings)
    lines = [f"{k}: {v}" for k, v in run_items(content)]
    wrapped = []
    for line in lines:
        wrapped += textwrap.wrap(line, 110, subsequent_indent="    ") or [""]
    room = max(4, 22 - int(1.5 * len(warnings)))
    if len(wrapped) > room:
        wrapped = wrapped[:room - 1] + ["... (all settings in report.html)"]
    fig.text(0.07, top, "Run", fontsize=10, fontweight="bold", va="top")
    fig.text(0.07, top - 0.02, "\n".join(wrapped), fontsize=7, family="monospace", va="top", linespacing=1.35)

    ax = fig.add_axes((0.07, 0.40, 0.86, 0.16))
    ax.axis("off")
    ax.set_title("CTV volume and boundary spread per margin (model CTV of the standard volume)", fontsize=10,
                 fontweight="bold", loc="left")
    table = ax.table(cellText=table_rows(content.table, TABLE_COLUMNS), colLabels=[c[1] for c in TABLE_COLUMNS],
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
        rest = 0.72 / (len(PARAMETER_COLUMNS) - 1)  # the names ("x (world), model error incl.") need the room
        table = ax.table(cellText=table_rows(content.parameters, PARAMETER_COLUMNS),
                         colLabels=[c[1] for c in PARAMETER_COLUMNS], loc="upper center", cellLoc="center",
                         colWidths=[0.28] + [rest] * (len(PARAMETER_COLUMNS) - 1))
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


def slice_page(content: ReportContent, margins, page: str) -> Figure:
    """Tri-planar slices through the core's centre of mass, one row per margin (at most ``MARGINS_PER_PAGE``)."""
    fig = Figure(figsize=A4)
    index = centre_index(np.asarray(content.classes))
    planes = [(Plane(content, fixed, h, v, index), name) for name, fixed, h, v in PLANES]
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


def histogram_page(content: ReportContent) -> Figure:
    """Histograms of the posterior initial position (x, y, z), with the truth and the MAP when given."""
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
    sections = (("What the uncertainty means", MEANING), ("What the model assumes", content.assumptions),
                ("Notes from the run", tuple(content.notes) or ("(none)",)), ("References", REFERENCES))
    for head, paragraphs in sections:
        lines.append(("h2", head))
        for p in paragraphs:
            wrapped = textwrap.wrap(p, 105)
            lines += [("p", ("- " if i == 0 else "  ") + t) for i, t in enumerate(wrapped)]
            lines.append(("gap", ""))
    lines += [("h2", "Research use"), *[("warn", t) for t in textwrap.wrap(RESEARCH_USE, 105)]]
    return lines


def note_pages(content: ReportContent) -> list[Figure]:
    """The plain-language notes, over as many pages as they need."""
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
