"""The files of a surrogate dataset (``bodil.forward.dataset``): the manifest, the shards, and reading them back.

A dataset folder holds ``manifest.json`` (format ``bodil-fk-dataset/1``: settings, anatomy, parameter names,
units and ranges, and per shard its split, index, sample count, SHA-256 and draw counts) and compressed
shards ``{split}-{index:05d}.npz`` with ``theta (k, 5)``, ``tissue (k, 2, n, n, n)`` (white and grey
matter, float16), ``u (k, n, n, n)`` (float16), ``origin_voxel``, ``crop_start`` (voxel coordinates in the
volume) and ``visible_cm3``. Readers check every shard's SHA-256 against the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from ..io import InputError, atomic_path

FORMAT = "bodil-fk-dataset/1"
"""The ``format`` entry of a dataset's manifest."""

SPLITS = ("train", "val", "test")
"""The splits of a dataset, in the order their random streams are numbered."""


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_record(settings) -> dict:
    """A settings dataclass as a JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.npz"


def write_shard(file, samples: Sequence[dict]) -> str:
    """Write the samples (dicts from ``bodil.forward.dataset.draw_sample``) as one shard, atomically; returns
    its SHA-256."""
    arrays = {
        "theta": np.stack([s["theta"] for s in samples]),
        "tissue": np.stack([s["tissue"] for s in samples]).astype(np.float16),
        "u": np.stack([s["u"] for s in samples]).astype(np.float16),
        "origin_voxel": np.stack([s["origin_voxel"] for s in samples]),
        "crop_start": np.stack([s["crop_start"] for s in samples]),
        "visible_cm3": np.array([s["visible_cm3"] for s in samples]),
    }
    with atomic_path(file, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return file_sha256(file)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset in memory: ``theta (N, 5)``, ``tissue (N, 2, n, n, n)``, ``u (N, n, n, n)``
    (tissue and ``u`` float16 as stored; cast per batch)."""

    theta: np.ndarray
    tissue: np.ndarray
    u: np.ndarray
    manifest: dict

    def __len__(self) -> int:
        return len(self.theta)


def load_manifest(path) -> dict:
    """The manifest of the dataset in folder ``path`` (checked to be a complete bodil dataset)."""
    file = os.path.join(os.fspath(path), "manifest.json")
    if not os.path.exists(file):
        raise InputError(f"{path} has no manifest.json; make a dataset with `bodil dataset` first.")
    with open(file, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise InputError(f"{file} is not a bodil FK dataset (format {manifest.get('format')!r}).")
    if not manifest.get("complete"):
        raise InputError(f"the dataset in {path} is incomplete; finish it with `bodil dataset --resume`.")
    return manifest


def load_split(path, split: str, *, limit: int | None = None) -> Split:
    """Load ``split`` (``"train"``, ``"val"`` or ``"test"``) of the dataset in folder ``path``; checks every
    shard's SHA-256 against the manifest. ``limit`` keeps the first samples only."""
    if split not in SPLITS:
        raise ValueError(f"load_split: split must be one of {SPLITS}, got {split!r}.")
    manifest = load_manifest(path)
    names = sorted((e["index"], name) for name, e in manifest["shards"].items() if e["split"] == split)
    parts: dict[str, list] = {"theta": [], "tissue": [], "u": []}
    count = 0
    for _, name in names:
        if limit is not None and count >= limit:
            break
        file = os.path.join(os.fspath(path), name)
        if not os.path.exists(file) or file_sha256(file) != manifest["shards"][name]["sha256"]:
            raise InputError(f"{file} is missing or does not match the manifest; regenerate it with `bodil "
                             f"dataset --resume`.")
        with np.load(file) as data:
            for k in parts:
                parts[k].append(data[k])
        count += len(parts["theta"][-1])
    if not parts["theta"]:
        raise InputError(f"the dataset in {path} has no {split!r} samples.")
    arrays = {k: np.concatenate(v)[:limit] for k, v in parts.items()}
    return Split(theta=arrays["theta"], tissue=arrays["tissue"], u=arrays["u"], manifest=manifest)


def split_sizes(manifest: dict) -> dict:
    """Samples per split in a manifest."""
    out = {s: 0 for s in SPLITS}
    for e in manifest["shards"].values():
        out[e["split"]] += e["samples"]
    return out


__all__: Sequence[str] = ["FORMAT", "SPLITS", "Split", "file_sha256", "load_manifest", "load_split", "settings_record",
                          "shard_name", "split_sizes", "write_shard"]
