"""BraTS cases as they come: the files of one case in a folder, and the label convention from their naming.

BraTS 2021 names a case's files ``<case>_t1``, ``<case>_t1ce``, ``<case>_t2``, ``<case>_flair`` and
``<case>_seg`` (labels 1 necrosis, 2 edema, 4 enhancing); BraTS 2023 and later ``<case>-t1n``, ``<case>-t1c``,
``<case>-t2w``, ``<case>-t2f`` and ``<case>-seg`` (labels 1 non-enhancing core, 2 edema, 3 enhancing). Each
with ``.nii`` or ``.nii.gz``; the suffix is matched case-insensitively. The segmentation and the T1 are
required, the other sequences are optional (bodil uses only the T1 for registration).
"""

from __future__ import annotations

import dataclasses
import os

from ..io import InputError

NAMING = {
    "brats2021": {"t1": "_t1", "t1c": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1c": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
"""Release -> sequence -> file-name suffix (before ``.nii``/``.nii.gz``); the release names the label convention."""

REQUIRED = ("seg", "t1")


@dataclasses.dataclass(frozen=True)
class BratsCase:
    """The files of one BraTS case: ``seg`` and ``t1`` (paths), ``t1c``, ``t2``, ``flair`` (paths or
    ``None``), the ``case_id``, and ``labels``, the label convention named by the release
    (``"brats2021"`` or ``"brats2023"``)."""

    directory: str
    case_id: str
    labels: str
    seg: str
    t1: str
    t1c: str | None = None
    t2: str | None = None
    flair: str | None = None

    def describe(self) -> str:
        """One line per file found, for the user."""
        style = "BraTS 2021" if self.labels == "brats2021" else "BraTS 2023+"
        lines = [f"BraTS case {self.case_id!r} in {self.directory} ({style} naming, label convention "
                 f"{self.labels}):"]
        for key in ("seg", "t1", "t1c", "t2", "flair"):
            path = getattr(self, key)
            lines.append(f"  {key:5s} {os.path.basename(path) if path else '(not found)'}")
        return "\n".join(lines)


def _stem(name: str) -> str | None:
    low = name.lower()
    for ext in (".nii.gz", ".nii"):
        if low.endswith(ext):
            return name[: -len(ext)]
    return None


def _match(stem: str) -> list[tuple[str, str, str]]:
    """(release, sequence, case id) for every naming the file stem fits."""
    low = stem.lower()
    return [(release, key, stem[: -len(suffix)]) for release, table in NAMING.items()
            for key, suffix in table.items() if low.endswith(suffix) and len(low) > len(suffix)]


def find_brats_case(directory) -> BratsCase:
    """The files of the one BraTS case in ``directory`` (not searched recursively).

    Raises:
        InputError: the folder is missing; no file follows either naming; files of both namings or of
            several cases are present; a sequence is matched by more than one file; the segmentation or the
            T1 is missing. The message lists what was found and what is expected.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise InputError(f"--brats-dir: {directory!r} is not a folder; give the folder of one BraTS case.")
    found: dict[str, dict[str, list[str]]] = {r: {} for r in NAMING}
    cases: dict[str, set[str]] = {r: set() for r in NAMING}
    for name in sorted(os.listdir(directory)):
        stem = _stem(name)
        if stem is None or not os.path.isfile(os.path.join(directory, name)):
            continue
        for release, key, case in _match(stem):
            found[release].setdefault(key, []).append(name)
            cases[release].add(case)
    expected = "; ".join(f"{r}: " + ", ".join(f"*{s}.nii.gz" for s in t.values()) for r, t in NAMING.items())
    used = [r for r in NAMING if found[r]]
    if not used:
        listing = ", ".join(sorted(os.listdir(directory))[:20]) or "(empty)"
        raise InputError(f"--brats-dir {directory}: no BraTS file found (contents: {listing}); expected {expected}.")
    if len(used) > 1:
        raise InputError(f"--brats-dir {directory}: files of both the BraTS 2021 and the BraTS 2023+ naming "
                         f"({found['brats2021']} and {found['brats2023']}); keep one case per folder.")
    release = used[0]
    if len(cases[release]) > 1:
        raise InputError(f"--brats-dir {directory}: files of more than one case ({sorted(cases[release])}); "
                         f"keep one case per folder.")
    for key, names in found[release].items():
        if len(names) > 1:
            raise InputError(f"--brats-dir {directory}: more than one file for the {key} sequence ({names}); "
                             f"remove or rename all but one.")
    missing = [k for k in REQUIRED if k not in found[release]]
    if missing:
        wanted = ", ".join(f"*{NAMING[release][k]}.nii.gz" for k in missing)
        raise InputError(f"--brats-dir {directory}: no {' and no '.join(missing)} file ({wanted}) among the "
                         f"{release} files found ({sorted(n for v in found[release].values() for n in v)}); bodil "
                         f"needs the segmentation and the T1.")
    paths = {k: os.path.join(directory, v[0]) for k, v in found[release].items()}
    return BratsCase(directory=directory, case_id=next(iter(cases[release])), labels=release, **paths)


__all__ = ["NAMING", "BratsCase", "find_brats_case"]
