"""Checkpoints of a run: the state after every stage, and the finished evaluations of the running stage.

Both are pickle files (trusted input only), each written to a temporary file in its folder, flushed and moved
into place (``os.replace``), so a crash never leaves a torn file.

* ``<checkpoint>``: ``{"format": "bodil.smc/2", "settings": SMCSettings._asdict(), "state": SMCState._asdict()}``
  after every stage. Files of format ``bodil.smc/1`` (before ``n`` was renamed ``num_samples`` and ``aux``
  ``extras``, and before per-particle ``stats``) are still read.
* ``<checkpoint>.evaluations/stage-SSSSS-BBBBBBB.pkl``: one file per batch of finished evaluations,
  ``{"format": "bodil.smc-evaluations/1", "token", "results": [(key, result), ...]}``. The token names the stage
  and the generator state it starts from (``token``), so only results of the very same stage are replayed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from typing import Any

from ...io import atomic_path
from .kernel import SMCSettings, SMCState

__all__ = ["CheckpointError", "Journal", "load", "save", "token"]
FORMAT = "bodil.smc/2"
_OLD_FORMATS = {"bodil.smc/1": ({"n": "num_samples"}, {"aux": "extras"})}  # renamed keys of settings, state
EVALUATIONS = "bodil.smc-evaluations/1"


class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, folder not writable...); the previous one is intact."""


def atomic_write(path: str, obj: Any) -> None:
    """Pickle ``obj`` to a temporary file next to ``path``, flush it to disk and move it into place."""
    try:
        with atomic_path(path, ".tmp") as tmp, open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise CheckpointError(err.errno, f"cannot write the checkpoint {path!r}: {err.strerror or err}. The "
                                         f"previous checkpoint is left as it was; free disk space or choose a "
                                         f"writable folder, then call again with resume=True") from err


def token(settings: SMCSettings, stage: int, rng: dict | None) -> str:
    """Names the evaluations of the stage that ends at ``stage`` and starts from the generator state ``rng``."""
    return hashlib.sha256(repr((tuple(settings), stage, rng)).encode()).hexdigest()


def save(path: str, settings: SMCSettings, state: SMCState) -> None:
    atomic_write(path, {"format": FORMAT, "settings": settings._asdict(), "state": state._asdict()})


def load(path: str, settings: SMCSettings) -> SMCState:
    """The state in the checkpoint ``path``, which must have been written with ``settings``."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
        fmt = data.get("format")
        if fmt != FORMAT and fmt not in _OLD_FORMATS:
            raise ValueError(f"format {fmt!r}, expected {FORMAT!r}")
        stored, state = dict(data["settings"]), dict(data["state"])
        for old, new in _OLD_FORMATS.get(fmt, ({}, {}))[0].items():
            stored[new] = stored.pop(old)
        for old, new in _OLD_FORMATS.get(fmt, ({}, {}))[1].items():
            state[new] = state.pop(old)
        stored, state = SMCSettings(**stored), SMCState(**state)
    except Exception as err:
        raise ValueError(f"cannot resume from {path!r}: not a readable bodil SMC checkpoint ({err}). "
                         f"Delete it or pass resume=False to start afresh.") from err
    diff = [f"{k}: checkpoint {a!r}, call {b!r}" for k, a, b in zip(settings._fields, stored, settings) if a != b]
    if diff:
        raise ValueError(f"checkpoint {path!r} was written with other settings ({'; '.join(diff)}); "
                         f"call with the same settings, or resume=False to start afresh.")
    return state


class Journal:
    """The finished evaluations of the running stage, checkpointed as they come back.

    One file per batch of results (module doc). Files that cannot be read (a power loss) are ignored and their
    evaluations run again. The files of a stage are deleted once the stage's state is checkpointed.
    """

    def __init__(self, checkpoint: str | None):
        self.folder = None if checkpoint is None else checkpoint + ".evaluations"
        self.stage, self.token, self.batch = 0, "", 0

    def prepare(self, keep: bool) -> None:
        """Create the folder (fails early where it cannot be written); without ``keep``, empty it."""
        if self.folder is None:
            return
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as err:
            raise CheckpointError(err.errno, f"cannot create the checkpoint folder {self.folder!r}: "
                                             f"{err.strerror or err}") from err
        if not keep:
            self.clear(None)

    def _files(self) -> list[tuple[int, int, str]]:
        out = []
        for name in os.listdir(self.folder):
            m = re.fullmatch(r"stage-(\d+)-(\d+)\.pkl", name)
            if m:
                out.append((int(m[1]), int(m[2]), os.path.join(self.folder, name)))
            elif name.endswith(".tmp"):
                out.append((-1, 0, os.path.join(self.folder, name)))
        return sorted(out)

    def open(self, stage: int, token: str) -> dict:
        """Start journaling ``stage``; the results already journaled for it, ``{key: result}``."""
        self.stage, self.token, self.batch, known = stage, token, 0, {}
        if self.folder is None:
            return known
        for s, b, file in self._files():
            if s != stage:
                continue
            self.batch = max(self.batch, b)
            try:
                with open(file, "rb") as f:
                    data = pickle.load(f)
            except Exception:  # cut short by a crash of the machine: evaluate again
                continue
            if data.get("format") == EVALUATIONS and data.get("token") == token:
                known.update(data["results"])
        return known

    def write(self, done: list) -> None:
        if self.folder is None:
            return
        self.batch += 1
        atomic_write(os.path.join(self.folder, f"stage-{self.stage:05d}-{self.batch:07d}.pkl"),
                     {"format": EVALUATIONS, "token": self.token, "results": done})

    def clear(self, upto: int | None) -> None:
        """Delete the files of stages ``<= upto`` (all files for ``None``) and leftover temporary files."""
        if self.folder is None:
            return
        for s, _, file in self._files():
            if upto is None or s <= upto:
                os.unlink(file)

    def close(self) -> None:
        """Remove the folder if it is empty (the run is complete)."""
        if self.folder is not None and os.path.isdir(self.folder) and not os.listdir(self.folder):
            os.rmdir(self.folder)
