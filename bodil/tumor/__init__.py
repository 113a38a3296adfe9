"""The brain-tumour (glioma) application: inputs, synthetic patients and, on top of the generic core, the
GliODIL posterior (Amoudruz et al. 2025, sec. 3.4).

* ``anatomy``: tissue fractions from NIfTI or the MNI152 atlas; ``box``: cubic boxes (``Crop``) and resampling.
* ``segmentation``: label conventions (BraTS 2021 / 2023 / custom) -> the tumour classes of the likelihood.
* ``synthetic``: a Fisher-Kolmogorov tumour grown in an anatomy, with its segmentation and ground truth.
* ``cohort``: validation patients that are not an inverse crime (another solver, initial condition,
  thresholds, tissue ratio, segmentation noise, label conventions and voxel spacings than the model's).
* ``model``: the GliODIL posterior (eq. 26-32) on the box around the tumour.
* ``ctv``: standard CTVs, equal-volume model CTVs, surface distances and overlap; ``ensemble``: the posterior
  ensemble of model CTVs and its spread.
* ``report``: the clinician report (PDF and HTML; ``report_content`` and ``report_pages`` hold its parts).
* ``registration``, ``registration_qc``: tissue maps by registering the MNI152 atlas to the patient's T1 (dipy;
  imported on use, not here); ``brats``: BraTS case folders; ``warped_patient``: test patients made by warping
  the atlas.
* ``settings``: ``CTVSettings``; ``pipeline``: ``run_ctv``, from segmentation and tissue to the output folder
  (what ``bodil ctv`` runs); ``checkpoint``: resuming an interrupted run.
"""

from . import anatomy, box, cohort, ctv, ensemble, model, pipeline, report, segmentation, settings, synthetic
from .anatomy import Anatomy, load_tissue, load_tissue_labels, mni152, resample_isotropic
from .box import Crop, crop_around
from .segmentation import (LABEL_CONVENTIONS, LabelConvention, Segmentation, classes_from_labels,
                           label_convention, load_segmentation, validate_segmentation)
from .synthetic import SyntheticPatient, synthetic_patient, write_synthetic
from .ctv import model_ctv, standard_ctv
from .ensemble import CTVEnsemble, MarginCTV, ctv_ensemble
from .model import TumorModel, tumor_model
from .settings import CTVSettings
from .pipeline import CTVRun, run_ctv
from .report import ReportContent, write_report

__all__ = [
    "CTVEnsemble",
    "CTVRun",
    "CTVSettings",
    "MarginCTV",
    "ReportContent",
    "TumorModel",
    "ctv",
    "ctv_ensemble",
    "ensemble",
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
    "box",
    "classes_from_labels",
    "crop_around",
    "label_convention",
    "load_segmentation",
    "load_tissue",
    "load_tissue_labels",
    "mni152",
    "resample_isotropic",
    "segmentation",
    "settings",
    "synthetic",
    "synthetic_patient",
    "validate_segmentation",
    "write_synthetic",
]
