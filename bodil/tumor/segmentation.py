"""Tumour segmentations: label conventions -> the classes of the likelihood.

The tumour model observes one class per voxel: ``HEALTHY`` = 0, ``EDEMA`` = 1 (visible tumour outside the
core, "glioma" in Amoudruz et al. 2025, eq. 31), ``CORE`` = 2 (necrotic and enhancing core) and ``IGNORE`` =
-1 (not observed): the classes ``BELOW``, ``BETWEEN``, ``ABOVE`` and ``UNOBSERVED`` of the interval and
three-class likelihoods (``bodil.likelihood``), the concentration lying below ``tau_lo``, between the
thresholds or above ``tau_up``. Segmentation files use integer labels whose meaning depends on the
convention, which is always explicit:

* ``"brats2021"``: 0 healthy, 1 necrosis (core), 2 edema, 4 enhancing tumour (core);
* ``"brats2023"``: 0 healthy, 1 non-enhancing tumour core (core), 2 edema, 3 enhancing tumour (core);
* a custom mapping ``{label: "core" | "edema" | "healthy" | "ignore"}`` or the same as a string
  ``"1:core,2:edema,4:core"`` (command line). Label 0 is healthy unless the mapping says otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from ..io import InputError, load_nifti, voxel_spacing
from ..likelihood import ABOVE, BELOW, BETWEEN, UNOBSERVED

IGNORE, HEALTHY, EDEMA, CORE = UNOBSERVED, BELOW, BETWEEN, ABOVE
"""The tumour classes of a voxel, as codes of ``bodil.likelihood``'s interval and three-class likelihoods."""

CLASS_CODES = {"healthy": HEALTHY, "edema": EDEMA, "core": CORE, "ignore": IGNORE}
"""Class names accepted in custom label mappings and their likelihood codes."""


@dataclasses.dataclass(frozen=True)
class LabelConvention:
    """What the integer labels of a segmentation mean.

    Attributes:
        name: e.g. ``"brats2021"``.
        classes: label -> likelihood class (``HEALTHY``, ``EDEMA``, ``CORE``, ``IGNORE``).
        names: label -> human-readable description.
    """

    name: str
    classes: Mapping[int, int]
    names: Mapping[int, str]

    def describe(self) -> str:
        """One line such as ``"0 healthy, 1 necrosis (core), 2 edema, 4 enhancing (core)"``."""
        return ", ".join(f"{label} {self.names.get(label, '?')}" for label in sorted(self.classes))

    def labels_of(self, cls: int) -> list[int]:
        """The labels that map to class ``cls``."""
        return sorted(label for label, c in self.classes.items() if c == cls)


LABEL_CONVENTIONS = {
    "brats2021": LabelConvention(
        name="brats2021",
        classes={0: HEALTHY, 1: CORE, 2: EDEMA, 4: CORE},
        names={0: "healthy", 1: "necrosis (core)", 2: "edema", 4: "enhancing tumour (core)"}),
    "brats2023": LabelConvention(
        name="brats2023",
        classes={0: HEALTHY, 1: CORE, 2: EDEMA, 3: CORE},
        names={0: "healthy", 1: "non-enhancing tumour core (core)", 2: "edema", 3: "enhancing tumour (core)"}),
}

_SPEC_HELP = ("give 'brats2021' (1 necrosis, 2 edema, 4 enhancing), 'brats2023' (1 non-enhancing core, 2 edema, "
              "3 enhancing) or a custom mapping such as '1:core,2:edema,4:core' (classes: core, edema, healthy, "
              "ignore; label 0 is healthy unless given)")


def _custom(mapping: Mapping, text: str) -> LabelConvention:
    classes, names = {}, {}
    for key, value in mapping.items():
        try:
            label = int(str(key).strip()) if not isinstance(key, (int, np.integer)) else int(key)
        except ValueError:
            raise InputError(f"label convention {text!r}: label {key!r} is not an integer; {_SPEC_HELP}.") from None
        cls = str(value).strip().lower()
        if cls not in CLASS_CODES:
            raise InputError(f"label convention {text!r}: class {value!r} of label {label} is not one of "
                             f"{sorted(CLASS_CODES)}; {_SPEC_HELP}.")
        if label in classes and names[label] != cls:
            raise InputError(f"label convention {text!r}: label {label} is given twice ({names[label]}, {cls}).")
        classes[label], names[label] = CLASS_CODES[cls], cls
    if not classes:
        raise InputError(f"label convention {text!r} is empty; {_SPEC_HELP}.")
    if CORE not in classes.values():
        raise InputError(f"label convention {text!r} has no 'core' label; the tumour model and the CTV margins "
                         f"start from the core. {_SPEC_HELP}.")
    if 0 not in classes:
        classes[0], names[0] = HEALTHY, "healthy"
    return LabelConvention(name=f"custom({text})", classes=dict(sorted(classes.items())),
                           names=dict(sorted(names.items())))


def label_convention(spec) -> LabelConvention:
    """A ``LabelConvention`` from a name (``"brats2021"``, ``"brats2023"``), a mapping ``{label: class}``,
    a string ``"1:core,2:edema,4:core"`` or a ``LabelConvention`` (returned as is).

    Raises:
        InputError: unknown name, bad syntax, unknown class, no core label.
    """
    if isinstance(spec, LabelConvention):
        return spec
    if isinstance(spec, Mapping):
        text = ",".join(f"{k}:{v}" for k, v in spec.items())
        return _custom(spec, text)
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in LABEL_CONVENTIONS:
            return LABEL_CONVENTIONS[key]
        if ":" in key:
            pairs = {}
            for item in filter(None, (p.strip() for p in key.split(","))):
                if item.count(":") != 1:
                    raise InputError(f"label convention {spec!r}: cannot read {item!r}; {_SPEC_HELP}.")
                label, cls = item.split(":")
                if label.strip() in pairs:
                    raise InputError(f"label convention {spec!r}: label {label.strip()} is given twice.")
                pairs[label.strip()] = cls
            return _custom(pairs, spec.strip())
        raise InputError(f"unknown label convention {spec!r}; {_SPEC_HELP}.")
    raise InputError(f"label convention must be a name, a mapping or a string, got {type(spec).__name__}; "
                     f"{_SPEC_HELP}.")


def classes_from_labels(labels: np.ndarray, convention, *, what: str = "segmentation") -> np.ndarray:
    """Map integer ``labels`` to likelihood classes (``np.int8``) with ``convention`` (any ``label_convention``
    spec).

    Raises:
        InputError: NaN or non-integer values, or labels that the convention does not know.
    """
    conv = label_convention(convention)
    arr = np.asarray(labels)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{what}: labels must be integers, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what}: the label map contains NaN or infinite values; labels must be integers.")
        if not np.all(arr == np.round(arr)):
            frac = arr[arr != np.round(arr)]
            raise InputError(f"{what}: the label map has non-integer values (e.g. {float(frac[0]):.4g}); a "
                             f"segmentation must hold integer labels (was it resampled with linear "
                             f"interpolation? use nearest-neighbour).")
    values, inverse = np.unique(arr.astype(np.int64), return_inverse=True)
    unknown = [int(v) for v in values if int(v) not in conv.classes]
    if unknown:
        raise InputError(f"{what}: label(s) {unknown} are not part of the {conv.name!r} convention "
                         f"({conv.describe()}); choose the right convention or pass a custom mapping, e.g. "
                         f"'1:core,2:edema,4:core' (--labels on the command line).")
    lut = np.asarray([conv.classes[int(v)] for v in values], dtype=np.int8)
    return lut[inverse.reshape(arr.shape)]


def validate_segmentation(classes: np.ndarray, affine=None, *, what: str = "segmentation") -> None:
    """Check an in-memory class map (``HEALTHY``/``EDEMA``/``CORE``/``IGNORE``) before modelling.

    Raises:
        InputError: not 3-D; no core voxel (the CTV margins start from the core); a tumour voxel (core or
            edema) on the outermost voxel layer (the tumour may be cut off by the field of view).
    """
    c = np.asarray(classes)
    if c.ndim != 3:
        raise InputError(f"{what}: expected a 3-D label map, got shape {c.shape}.")
    if affine is not None:
        a = np.asarray(affine, float)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise InputError(f"{what}: the affine must be a finite 4x4 matrix.")
    bad = np.setdiff1d(np.unique(c), list(CLASS_CODES.values()))
    if bad.size:
        raise InputError(f"{what}: class values {bad.tolist()} are not classes (0 healthy, 1 edema, 2 core, "
                         f"-1 ignore); map labels with classes_from_labels first.")
    if not np.any(c == CORE):
        raise InputError(f"{what}: the tumour core is empty (no core voxel); the model and the CTV margins start "
                         f"from the core. Check the label convention (core labels, e.g. BraTS 2021: 1 and 4).")
    tumour = (c == CORE) | (c == EDEMA)
    border = np.zeros_like(tumour)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    touching = tumour & border
    if np.any(touching):
        first = tuple(int(i) for i in np.argwhere(touching)[0])
        raise InputError(f"{what}: {int(touching.sum())} tumour voxel(s) lie on the border of the volume (e.g. "
                         f"voxel {first}); the tumour may be cut off by the field of view. Use a volume that "
                         f"contains the whole tumour with at least one voxel of margin.")


@dataclasses.dataclass(frozen=True, eq=False)
class Segmentation:
    """A checked segmentation: likelihood ``classes`` (int8), original ``labels``, ``affine``, ``convention``."""

    classes: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    convention: LabelConvention
    path: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.classes.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """mm per voxel along each array axis (from the affine)."""
        return voxel_spacing(self.affine)

    @property
    def core(self) -> np.ndarray:
        return self.classes == CORE

    @property
    def edema(self) -> np.ndarray:
        return self.classes == EDEMA

    @property
    def tumor(self) -> np.ndarray:
        """Core or edema."""
        return self.core | self.edema


def load_segmentation(path, convention="brats2021") -> Segmentation:
    """Read a NIfTI label map, map it with ``convention`` and check it (``validate_segmentation``).

    Raises:
        InputError: unreadable file, unknown labels, empty core, tumour on the volume border.
    """
    conv = label_convention(convention)
    vol = load_nifti(path, what="segmentation")
    what = f"segmentation {vol.path!r}"
    classes = classes_from_labels(vol.data, conv, what=what)
    validate_segmentation(classes, vol.affine, what=what)
    return Segmentation(classes=classes, labels=vol.data.astype(np.int32), affine=vol.affine, convention=conv,
                        path=vol.path)
