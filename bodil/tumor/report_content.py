"""What a clinician report shows: ``ReportContent`` (checked before drawing), the columns of its tables, its
fixed texts (meaning, assumptions, references, research-use warning) and the formatting of table cells shared
by the PDF pages (``bodil.tumor.report_pages``) and the HTML page (``bodil.tumor.report``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .segmentation import CORE, EDEMA, HEALTHY, IGNORE

# (key, header, format): the columns of the volume table; ``CTVEnsemble.table()`` gives these keys
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
    "The diffusivity is constant within white matter (Dw) and within grey matter (Dg); there is no flux into "
    "cerebrospinal fluid or out of the brain.",
    "The tumour started from a single focus: a small Gaussian seed at an unknown initial position.",
    "Visible edema (FLAIR) and the core (T1c) are the regions where the concentration exceeds two thresholds.",
    "The segmentation is correct; the tumour has a single focus; no treatment effects (surgery, "
    "radiotherapy, chemotherapy) and no mass effect (tissue is not displaced by the tumour).",
)
"""What every run assumes; ``run_assumptions`` adds what a run fixed, fitted and sampled."""

_WORDS = {"Dw": "the white-matter diffusivity Dw", "rho": "the proliferation rate rho",
          "ratio": "the diffusivity ratio Dw/Dg", "tau_lo": "the edema threshold", "tau_up": "the core threshold"}


def run_assumptions(fixed: dict, fitted, sampled, thresholds: dict | None = None,
                    growth: dict | None = None, origin: dict | None = None) -> tuple[str, ...]:
    """``ASSUMPTIONS`` plus, in plain words, which parameters this run fixed (with their values), fitted at the
    MAP only, sampled in the posterior (their uncertainty is in the CTV ensemble) and integrated out
    (``thresholds``: the summary's ``posterior.thresholds``), and how ``Dw T`` and ``rho T`` were given with the
    model's error (``growth``: the summary's ``posterior.growth_with_model_error``), and the initial position
    (``origin``: ``posterior.origin_with_model_error``)."""
    origin_names = ("x0", "y0", "z0")

    def words(names):
        out = [_WORDS.get(n, n) for n in names if n not in origin_names]
        if any(n in origin_names for n in names):
            out.append("the initial position")
        return ", ".join(out)

    lines = list(ASSUMPTIONS)
    integrated = thresholds is not None and thresholds.get("treatment") == "marginalised"
    integrated_names = ("tau_lo", "tau_up") if integrated else ()
    held = [f"{_WORDS.get(k, k)} = {v:g}" for k, v in fixed.items() if k not in origin_names + integrated_names]
    if held:
        lines.append("Fixed, not inferred: " + ", ".join(held) + "; errors in these values are not part of the "
                     "uncertainty shown.")
    only_map = [n for n in fitted if n not in sampled]
    if only_map:
        lines.append(f"Fitted to the image but held at that best fit in the ensemble: {words(only_map)}; their "
                     f"uncertainty is not part of the spread shown.")
    if sampled:
        lines.append(f"Sampled in the posterior (their uncertainty is in the CTV ensemble): {words(sampled)}.")
    if "ratio" in sampled:
        lines.append("One image hardly informs the diffusivity ratio Dw/Dg: its interval is close to its prior's "
                     "range, and it is sampled so that the CTVs carry that uncertainty, not to estimate it.")
    if integrated:
        ranges = "; ".join(f"{_WORDS[n]} uniform on [{thresholds['prior'][n][0]:g}, {thresholds['prior'][n][1]:g}]"
                           for n in integrated_names)
        fit_at = [f"{_WORDS[n]} = {fixed[n]:g}" for n in integrated_names if n in fixed]
        lines.append(f"Integrated over their prior in the posterior (not fixed at one guess): {ranges}"
                     + (f"; the best fit (MAP) holds {', '.join(fit_at)}." if fit_at else "."))
    if growth is not None and growth.get("applied"):
        lines.append(f"Dw T and rho T (\"model error incl.\"): the model's values shifted and widened by the "
                     f"model's error, a random factor (Kennedy and O'Hagan, Bayesian calibration of computer models, "
                     f"2001) measured on {growth['calibration']}, where the model's rho T was low by a factor "
                     f"{np.exp(growth['rho_T']['mu']):.2g}; {growth['validation']}. They describe the growth rates "
                     f"only; the CTVs do not use them.")
    elif growth is not None:
        lines.append("Dw and rho are the model's values; its own error is not included, because it was measured "
                     "at other settings (" + growth["why"] + ").")
    if origin is not None and origin.get("applied"):
        lines.append(f"Initial position (\"model error incl.\"): the posterior's spread widened by the model's "
                     f"error in where it places the start, a normal of sd {origin['sd_mm']:.2g} mm per axis "
                     f"({origin['per_spacing']:.2g} of the box spacing) measured on {origin['calibration']}; "
                     f"{origin['validation']}. The CTV ensemble uses the posterior's own spread.")
    return tuple(lines)


REFERENCES = (
    "Tumour model, discretisation and CTV protocol: M. Balcerak et al., Individualizing glioma radiotherapy "
    "planning by optimization of data and physics-informed discrete loss. Nature Communications 16:5982 (2025).",
    "Posterior over the growth parameters (mode approximation, BASIS sampling, CTV ensembles): L. Amoudruz, "
    "S. Litvinov, C. Papadimitriou, P. Koumoutsakos, Bayesian Inference for PDE-based Inverse Problems using "
    "the Optimization of a Discrete Loss (2025); S. Wu et al., Bayesian annealed sequential importance "
    "sampling, ASCE-ASME J. Risk Uncertainty Eng. Syst. B 4(1):011008 (2018).",
)


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
        figures: extra pages, ``(title, matplotlib Figure)`` pairs drawn after the parameter page (for
            example the atlas registration's quality control).
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
    assumptions: tuple = ASSUMPTIONS
    figures: tuple = ()

    @classmethod
    def from_ensemble(cls, ensemble, *, patient_id: str, run: dict, tissue, classes, affine, origin_samples,
                      parameters=(), notes=(), origin_truth=None, origin_map=None,
                      assumptions=ASSUMPTIONS) -> "ReportContent":
        """Content from a ``bodil.tumor.ensemble.CTVEnsemble`` computed on the same (input) grid."""
        return cls(patient_id=patient_id, run=dict(run), tissue=tissue, classes=classes,
                   spacing=tuple(ensemble.spacing), affine=affine, margins_mm=tuple(ensemble.margins_mm),
                   standard_ctv={m: ensemble[m].standard for m in ensemble.margins_mm},
                   probability={m: ensemble[m].probability for m in ensemble.margins_mm},
                   origin_samples=origin_samples, table=ensemble.table(), parameters=list(parameters),
                   notes=list(notes), origin_truth=origin_truth, origin_map=origin_map,
                   assumptions=tuple(assumptions))

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
        if not np.all(np.isin(classes, (IGNORE, HEALTHY, EDEMA, CORE))):
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


def format_cell(value, spec: str) -> str:
    """``spec.format(value)``; ``"-"`` for a missing value, ``"n/a"`` for a non-finite number."""
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return "n/a"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def table_rows(rows, columns) -> list[list[str]]:
    """The cells of a table: one list of strings per row, one string per ``(key, header, format)`` column."""
    return [[format_cell(row.get(key), spec) for key, _, spec in columns] for row in rows]


def run_items(content: ReportContent) -> list[tuple[str, str]]:
    """The run settings as ``(name, value)`` strings."""
    return [(str(k), str(v)) for k, v in content.run.items()]


def bodil_version() -> str:
    """The installed bodil version, printed on every report."""
    import bodil

    return getattr(bodil, "__version__", "unknown")
