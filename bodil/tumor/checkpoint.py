"""The checkpoint of an interrupted ``run_ctv``: what it must match to be resumed, and whether to resume.

A checkpoint folder ``<out>.checkpoint/`` holds ``run.json`` (the ``fingerprint``: the settings and SHA-256
hashes of the input arrays) and the sampler's own checkpoint. ``check_checkpoint`` refuses a checkpoint left
by other inputs or settings, and one that resuming was not asked for, so that hours of sampling are never
thrown away by accident.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from ..io import InputError
from .anatomy import Anatomy
from .segmentation import Segmentation
from .settings import CTVSettings


def fingerprint(seg: Segmentation, anatomy: Anatomy, settings: CTVSettings) -> dict:
    """What a checkpoint must match to be resumed: the settings and hashes of the input arrays."""
    digest = hashlib.sha256()
    for arr in (seg.classes, seg.affine, anatomy.wm, anatomy.gm, anatomy.csf, anatomy.affine):
        a = np.ascontiguousarray(arr)
        digest.update(str((a.dtype, a.shape)).encode())
        digest.update(a.tobytes())
    return {"format": "bodil.ctv-checkpoint/1", "inputs_sha256": digest.hexdigest(),
            "settings": json.loads(json.dumps(dataclasses.asdict(settings)))}


def check_checkpoint(checkpoint: str, fingerprint: dict, resume: bool) -> bool:
    """Whether to resume; refuses a checkpoint left by another run, or one that ``resume`` was not asked for."""
    if not os.path.exists(checkpoint):
        return False
    if not resume:
        raise InputError(f"{checkpoint} holds the checkpoint of an interrupted run into this output folder; "
                         "continue it with --resume (resume=True), or delete that folder to start afresh.")
    try:
        with open(os.path.join(checkpoint, "run.json")) as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the checkpoint {checkpoint} ({err}); delete that folder to start "
                         "afresh.") from err
    if stored != fingerprint:
        what = [k for k in ("inputs_sha256", "settings") if stored.get(k) != fingerprint[k]]
        diff = [f"{k}: {stored.get('settings', {}).get(k)!r} -> {v!r}" for k, v in fingerprint["settings"].items()
                if stored.get("settings", {}).get(k) != v]
        raise InputError(f"the checkpoint {checkpoint} was written for other {' and '.join(what)}"
                         + (f" ({'; '.join(diff)})" if diff else "") + "; resume with the same inputs and "
                         "settings, or delete that folder to start afresh.")
    return True


__all__ = ["check_checkpoint", "fingerprint"]
