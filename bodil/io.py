"""NIfTI input with validation, and outputs that are either whole or absent.

Every bad input of the tumour pipeline raises ``InputError`` (a ``ValueError``; the command line maps it
to exit status 2) with a message that names the input, what is wrong with it and how to fix it.

Voxel geometry always comes from the NIfTI header: a ``Volume`` carries its 4x4 ``affine`` (voxel index
``(i, j, k, 1)`` -> world mm) and its ``spacing`` is the length of the affine's columns, in mm per voxel
along each array axis. Nothing assumes 1-mm voxels.

Outputs are written atomically: ``atomic_directory`` builds a result in a temporary sibling directory and
renames it into place on success, ``write_json`` and ``save_nifti`` write a temporary file and
``os.replace`` it. A crash or a bad input never leaves half a result that looks whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping

import numpy as np

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


class InputError(ValueError):
    """A user input (file, label map, option) is missing, unreadable or inconsistent."""


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image: ``data`` (float64), its 4x4 voxel-to-world ``affine`` (mm) and the file it came from."""

    data: np.ndarray
    affine: np.ndarray
    path: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """mm per voxel along each array axis: the norms of the affine's first three columns."""
        return voxel_spacing(self.affine)


def voxel_spacing(affine) -> tuple[float, float, float]:
    """mm per voxel along each array axis, ``|A[:3, k]|`` for the 4x4 ``affine`` ``A``."""
    a = np.asarray(affine, dtype=float)
    return tuple(float(s) for s in np.linalg.norm(a[:3, :3], axis=0))


def _check_affine(affine, what: str, path) -> np.ndarray:
    a = np.asarray(affine, dtype=float)
    where = f" ({path})" if path else ""
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputError(f"{what}{where}: the voxel-to-world affine must be a finite 4x4 matrix, got "
                         f"{a.tolist() if a.size <= 16 else a.shape}; fix the NIfTI header (qform/sform).")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise InputError(f"{what}{where}: the voxel-to-world affine is singular (zero voxel size?); fix the "
                         f"NIfTI header (qform/sform, pixdim).")
    return a


def load_nifti(path, *, what: str) -> Volume:
    """Read a 3-D NIfTI image as float64 and check it.

    A trailing singleton fourth axis (``(x, y, z, 1)``, common in exported label maps) is dropped.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        what: what the file is, for error messages (for example ``"white-matter map"``).

    Raises:
        InputError: the file is missing or unreadable, the image is not 3-D, its affine is not usable or it
            contains NaN or infinite values.
    """
    import nibabel as nib

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what}: file not found: {path!r}; check the path.")
    if os.path.isdir(path):
        raise InputError(f"{what}: {path!r} is a directory; give a NIfTI file (.nii or .nii.gz).")
    try:
        img = nib.load(path)
        data = np.asarray(img.get_fdata(dtype=np.float64))
        affine = np.asarray(img.affine, dtype=float)
    except Exception as err:  # nibabel raises many types (ImageFileError, gzip, EOF, struct, ...)
        raise InputError(f"{what}: cannot read {path!r} as a NIfTI image ({type(err).__name__}: {err}); "
                         f"give a valid .nii or .nii.gz file.") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{what}: {path!r} has shape {data.shape}, expected a 3-D volume; extract one "
                         f"3-D image (a single time point or channel) first.")
    affine = _check_affine(affine, what, path)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - finite.sum())
        raise InputError(f"{what}: {path!r} contains {bad} NaN or infinite voxel value(s); replace them "
                         f"(for example by 0) before running.")
    return Volume(data=data, affine=affine, path=path)


def check_same_grid(volumes: Mapping[str, Volume], atol: float = 1e-3) -> None:
    """Raise ``InputError`` unless all ``volumes`` share one shape and one affine (within ``atol`` mm).

    Args:
        volumes: name -> ``Volume`` (or any object with ``shape`` and ``affine``); the names appear in the
            message.
        atol: absolute tolerance on the affine entries, in mm.
    """
    items = list(volumes.items())
    if not items:
        return
    name0, v0 = items[0]
    where0 = f" ({v0.path})" if getattr(v0, "path", None) else ""
    for name, v in items[1:]:
        where = f" ({v.path})" if getattr(v, "path", None) else ""
        if tuple(v.shape) != tuple(v0.shape):
            raise InputError(f"{name}{where} has shape {tuple(v.shape)} but {name0}{where0} has shape "
                             f"{tuple(v0.shape)}; resample/register all inputs onto the same voxel grid.")
        if not np.allclose(np.asarray(v.affine, float), np.asarray(v0.affine, float), rtol=0.0, atol=atol):
            raise InputError(f"{name}{where} and {name0}{where0} have different voxel-to-world affines:\n"
                             f"{np.array2string(np.asarray(v.affine, float), precision=4)}\nvs\n"
                             f"{np.array2string(np.asarray(v0.affine, float), precision=4)}\n"
                             f"resample/register all inputs onto the same voxel grid.")


def _temporary_sibling(path: str, suffix: str = "", kind: str = "tmp") -> str:
    """A fresh hidden name next to ``path`` (not created: files and folders made there get the usual
    permissions from the umask, unlike ``tempfile.mkstemp``'s private 0600)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{kind}-{uuid.uuid4().hex[:12]}{suffix}")


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[str]:
    """Yield a temporary name next to ``path`` to write the file into; on normal exit it replaces ``path``
    (``os.replace``), on an exception it is removed and ``path`` is left as it was.

    ::

        with atomic_path("summary.json", ".json") as tmp:
            with open(tmp, "w") as f:
                f.write(text)
    """
    path = os.fspath(path)
    tmp = _temporary_sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def remove_stale_temporaries(out) -> list[str]:
    """Delete the hidden temporary folders (``.<name>.tmp-*``) that a killed ``atomic_directory(out)`` left
    next to ``out``; returns their paths. Only for the owner of ``out`` (a run being resumed)."""
    import glob

    folder, name = os.path.split(os.path.abspath(os.fspath(out)))
    stale = [p for p in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.tmp-*")) if os.path.isdir(p)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_nifti(path, data, affine, *, dtype=np.float32) -> str:
    """Write ``data`` with ``affine`` as NIfTI (``.nii`` or ``.nii.gz``), atomically; returns the path.

    The qform and sform are both set to ``affine`` (code 1, scanner coordinates)."""
    import nibabel as nib

    path = os.fspath(path)
    suffix = next((s for s in _NIFTI_SUFFIXES if path.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"save_nifti: {path!r} must end with .nii or .nii.gz.")
    arr = np.asarray(data)
    if arr.ndim not in (3, 4):
        raise ValueError(f"save_nifti: data must be 3-D (or 4-D), got shape {arr.shape}.")
    img = nib.Nifti1Image(arr.astype(dtype), np.asarray(affine, dtype=float))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path, suffix) as tmp:
        nib.save(img, tmp)
    return path


def _to_jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__array__"):  # jax arrays
        return np.asarray(obj).tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"write_json: cannot write an object of type {type(obj).__name__} as JSON.")


def write_json(path, obj) -> str:
    """Write ``obj`` as indented JSON atomically (temporary file + ``os.replace``); numpy values become
    plain numbers and lists. Returns the path."""
    path = os.fspath(path)
    text = json.dumps(obj, indent=2, default=_to_jsonable) + "\n"
    with atomic_path(path, ".json") as tmp, open(tmp, "x", encoding="utf-8") as f:
        f.write(text)
    return path


def check_output(out, overwrite: bool = False) -> str:
    """The absolute path of the output folder ``out``; raises ``InputError`` if it is a file, or a non-empty
    directory and not ``overwrite`` (what ``atomic_directory`` checks before any work, for callers whose work
    starts earlier)."""
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise InputError(f"output {out!r} exists and is not a directory; choose another output path.")
        if os.listdir(out) and not overwrite:
            raise InputError(f"output directory {out!r} exists and is not empty; choose another path or "
                             f"allow overwriting (overwrite=True, --overwrite).")
    return out


@contextlib.contextmanager
def atomic_directory(out, *, overwrite: bool = False) -> Iterator[str]:
    """Build an output directory in a temporary sibling and move it into place only on success.

    ::

        with atomic_directory("results/patient1") as tmp:
            save_nifti(os.path.join(tmp, "ctv.nii.gz"), ...)
        # now results/patient1 holds everything, or (after an exception) is untouched

    On normal exit the temporary directory is renamed to ``out`` (an existing ``out`` is replaced only with
    ``overwrite=True``, or when it is empty); on an exception it is deleted and ``out`` is left as it was.

    Raises:
        InputError: before any work, if ``out`` is a file, or a non-empty directory and not ``overwrite``.
    """
    out = check_output(out, overwrite)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = _temporary_sibling(out)
    os.mkdir(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if os.path.exists(out):
            old = _temporary_sibling(out, kind="old")
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        if old is not None and not os.path.exists(out):
            os.rename(old, out)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
