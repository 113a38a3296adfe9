"""The files of a surrogate dataset (``bodil.forward.dataset``): the manifest, the shards, and reading them back.

A dataset folder holds ``manifest.json`` (format ``bodil-fk-dataset/1``: settings, anatomy, parameter names,
units and ranges, and per shard its split, index, sample count, SHA-256 and draw counts) and compressed
shards ``{split}-{index:05d}.npz`` with ``theta (k, 5)``, ``tissue (k, 2, n, n, n)`` (white and grey
matter, float16), ``u (k, n, n, n)`` (float16), ``origin_voxel``, ``crop_start`` (voxel coordinates in the
volume) and ``visible_cm3``. Readers check every shard's SHA-256 against the manifest.

The machinery is shared with other datasets (``bodil.forward.steady``): ``shard_plan``, ``write_sharded``
(shards and manifest, resumable) and ``load_arrays`` take the format and the command that makes the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
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
    return write_arrays(file, shard_arrays(samples))


def shard_arrays(samples: Sequence[dict]) -> dict:
    """The arrays of one FK shard from the samples (dicts from ``bodil.forward.dataset.draw_sample``)."""
    return {
        "theta": np.stack([s["theta"] for s in samples]),
        "tissue": np.stack([s["tissue"] for s in samples]).astype(np.float16),
        "u": np.stack([s["u"] for s in samples]).astype(np.float16),
        "origin_voxel": np.stack([s["origin_voxel"] for s in samples]),
        "crop_start": np.stack([s["crop_start"] for s in samples]),
        "visible_cm3": np.array([s["visible_cm3"] for s in samples]),
    }


def write_arrays(file, arrays: dict) -> str:
    """Write named arrays as one compressed shard, atomically; returns its SHA-256."""
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


def load_manifest(path, format: str = FORMAT, command: str = "bodil dataset") -> dict:
    """The manifest of the dataset in folder ``path`` (checked to be a complete dataset of ``format``, made by
    ``command``)."""
    file = os.path.join(os.fspath(path), "manifest.json")
    if not os.path.exists(file):
        raise InputError(f"{path} has no manifest.json; make a dataset with `{command}` first.")
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{file} is damaged (not JSON); make the dataset again with `{command}`.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != format:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(f"{file} is not a {format} dataset (format {found!r}); make one with `{command}`.")
    if not manifest.get("complete"):
        raise InputError(f"the dataset in {path} is incomplete; finish it with `{command} --resume`.")
    return manifest


def load_arrays(path, split: str, keys: Sequence[str], *, limit: int | None = None, format: str = FORMAT,
                command: str = "bodil dataset") -> tuple[dict, dict]:
    """``(arrays, manifest)``: the arrays ``keys`` of ``split`` of the dataset in folder ``path``, shards
    concatenated in order (the first ``limit`` samples only if given); every shard's SHA-256 is checked
    against the manifest."""
    if split not in SPLITS:
        raise ValueError(f"load_split: split must be one of {SPLITS}, got {split!r}.")
    manifest = load_manifest(path, format, command)
    names = sorted((e["index"], name) for name, e in manifest["shards"].items() if e["split"] == split)
    parts: dict[str, list] = {k: [] for k in keys}
    count = 0
    for _, name in names:
        if limit is not None and count >= limit:
            break
        file = os.path.join(os.fspath(path), name)
        if not os.path.exists(file) or file_sha256(file) != manifest["shards"][name]["sha256"]:
            raise InputError(f"{file} is missing or does not match the manifest; regenerate it with `{command} "
                             f"--resume`.")
        with np.load(file) as data:
            for k in parts:
                parts[k].append(data[k])
        count += len(parts[keys[0]][-1])
    if not parts[keys[0]]:
        raise InputError(f"the dataset in {path} has no {split!r} samples.")
    return {k: np.concatenate(v)[:limit] for k, v in parts.items()}, manifest


def load_split(path, split: str, *, limit: int | None = None) -> Split:
    """Load ``split`` (``"train"``, ``"val"`` or ``"test"``) of the dataset in folder ``path``; checks every
    shard's SHA-256 against the manifest. ``limit`` keeps the first samples only."""
    arrays, manifest = load_arrays(path, split, ("theta", "tissue", "u"), limit=limit)
    return Split(theta=arrays["theta"], tissue=arrays["tissue"], u=arrays["u"], manifest=manifest)


def shard_plan(sizes: dict, shard_size: int) -> list[tuple[str, int, int]]:
    """``(split, shard index, samples)`` for every shard of a dataset with ``sizes[split]`` samples per split."""
    out = []
    for split in SPLITS:
        n = sizes[split]
        for i in range(math.ceil(n / shard_size)):
            out.append((split, i, min(shard_size, n - i * shard_size)))
    return out


def open_manifest(out, header: dict, resume: bool, where: str = "generate_dataset",
                  command: str = "bodil dataset") -> dict:
    """A new manifest with ``header``, or the one in folder ``out`` when resuming (its entries must equal
    ``header``'s)."""
    path = os.path.join(out, "manifest.json")
    if not os.path.exists(path):
        return dict(header, shards={}, rejections={}, wall_s=0.0, complete=False)
    if not resume:
        raise InputError(f"{where}: {out} already holds a dataset; pass resume=True ({command} --resume) to "
                         f"continue it, or choose another folder.")
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    for key in header:
        if old.get(key) != json.loads(json.dumps(header[key])):
            raise InputError(f"{where}: the dataset in {out} was made with a different {key!r}; resume it with the "
                             f"same settings and inputs, or choose another folder.")
    return old


def write_sharded(out, header: dict, plan: Sequence[tuple[str, int, int]], make_shard, *, resume: bool,
                  progress, desc: str, where: str = "generate_dataset", command: str = "bodil dataset") -> dict:
    """Write the shards of ``plan`` (``shard_plan``) into folder ``out`` that are not already there with the
    SHA-256 the manifest records; after each, the manifest (``header`` plus per-shard entries, draw counts
    and wall time) is written atomically, so a killed run resumes (``resume=True``) where it stopped.

    ``make_shard(split, index, count, step)`` returns ``(arrays, stats)``: the shard's named arrays and its
    draw counts (a dict of integers); it calls ``step()`` once per sample (the progress bar). Returns the
    completed manifest.
    """
    from ..io import write_json
    from ..progress import as_meter

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "manifest.json")
    manifest = open_manifest(out, header, resume, where, command)
    todo = []
    for split, index, count in plan:
        entry = manifest["shards"].get(shard_name(split, index))
        file = os.path.join(out, shard_name(split, index))
        if not (entry and os.path.exists(file) and file_sha256(file) == entry["sha256"]):
            todo.append((split, index, count))
    with as_meter(progress).session(desc, total=sum(count for _, _, count in todo), unit="sample") as bar:
        for split, index, count in todo:
            t0 = time.perf_counter()
            arrays, stats = make_shard(split, index, count, bar.step)
            sha = write_arrays(os.path.join(out, shard_name(split, index)), arrays)
            manifest["shards"][shard_name(split, index)] = {"split": split, "index": index, "samples": count,
                                                            "sha256": sha, "draws": stats}
            for k, v in stats.items():
                manifest["rejections"][k] = manifest["rejections"].get(k, 0) + v
            manifest["wall_s"] = float(manifest["wall_s"]) + time.perf_counter() - t0
            write_json(path, manifest)
    manifest["complete"] = True
    write_json(path, manifest)
    return manifest


def split_sizes(manifest: dict) -> dict:
    """Samples per split in a manifest."""
    out = {s: 0 for s in SPLITS}
    for e in manifest["shards"].values():
        out[e["split"]] += e["samples"]
    return out


__all__: Sequence[str] = ["FORMAT", "SPLITS", "Split", "file_sha256", "load_arrays", "load_manifest", "load_split",
                          "open_manifest", "settings_record", "shard_arrays", "shard_name", "shard_plan", "split_sizes",
                          "write_arrays",
                          "write_shard", "write_sharded"]
