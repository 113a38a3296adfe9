"""The brain-tumour (glioma) application: inputs, synthetic patients and, on top of the generic core, the
GliODIL posterior (Amoudruz et al. 2025, sec. 3.4).

* ``anatomy``: tissue fractions from NIfTI or the MNI152 atlas; cubic boxes (``Crop``) and resampling.
* ``segmentation``: label conventions (BraTS 2021 / 2023 / custom) -> likelihood classes, checks.
* ``synthetic``: a Fisher-Kolmogorov tumour grown in an anatomy, with its segmentation and ground truth.
* ``model``: the GliODIL posterior (eq. 26-32) on the box around the tumour.
* ``ctv``: standard CTVs, equal-volume model CTVs, ensembles and their spread.
* ``report``: the clinician report (PDF and HTML).
* ``pipeline``: ``run_ctv``, from segmentation and tissue to the output folder (what ``bodil ctv`` runs).
"""

from . import anatomy, ctv, model, pipeline, report, segmentation, synthetic
from .anatomy import Anatomy, Crop, crop_around, load_tissue, load_tissue_labels, mni152, resample_isotropic
from .segmentation import (LABEL_CONVENTIONS, LabelConvention, Segmentation, classes_from_labels,
                           label_convention, load_segmentation, validate_segmentation)
from .synthetic import SyntheticPatient, synthetic_patient, write_synthetic
from .ctv import CTVEnsemble, MarginCTV, ctv_ensemble, model_ctv, standard_ctv
from .model import TumorModel, tumor_model
from .pipeline import CTVRun, Settings, run_ctv
from .report import ReportContent, write_report

__all__ = [
    "CTVEnsemble",
    "CTVRun",
    "MarginCTV",
    "ReportContent",
    "Settings",
    "TumorModel",
    "ctv",
    "ctv_ensemble",
    "model",
    "model_ctv",
    "pipeline",
    "report",
    "run_ctv",
    "standard_ctv",
    "tumor_model",
    "write_report",
    "Anatomy",
    "Crop",
    "LABEL_CONVENTIONS",
    "LabelConvention",
    "Segmentation",
    "SyntheticPatient",
    "anatomy",
    "classes_from_labels",
    "crop_around",
    "label_convention",
    "load_segmentation",
    "load_tissue",
    "load_tissue_labels",
    "mni152",
    "resample_isotropic",
    "segmentation",
    "synthetic",
    "synthetic_patient",
    "validate_segmentation",
    "write_synthetic",
]
