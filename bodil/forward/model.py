"""A trained surrogate network as one object: ``Surrogate`` (prediction, inversion, normalisation) and its
weights files.

``Surrogate`` holds a network of ``bodil.forward.network`` with the parameter box it was trained on
(``theta_lower``, ``theta_upper``, physical units) and the crop (``size`` voxels at ``spacing_mm``).
Parameters are normalised to ``[-1, 1]`` over that box before they reach the network.

Weights files (``.eqx``): one JSON line (format ``bodil-surrogate/1``, architecture, parameter box, spacing,
how the network was trained) followed by ``equinox.tree_serialise_leaves``; ``load`` needs no network
access. ``pretrained()`` loads the weights shipped in ``bodil/forward/weights/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..io import InputError, atomic_path
from .network import KINDS, Architecture, build, theta_channels

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
"""Folder of the shipped weights (``fk_forward.eqx``, ``fk_inverse.eqx``, ``README.md``)."""

FORMAT = "bodil-surrogate/1"
"""The ``format`` entry of a weights file's header."""


@dataclasses.dataclass(frozen=True, eq=False)
class Surrogate:
    """A trained network with what it needs to be used: the parameter ranges (``theta_lower``,
    ``theta_upper``, physical units, ``bodil.forward.dataset.THETA_NAMES``), the crop it was trained on
    (``size`` voxels at ``spacing_mm``) and how it was made (``info``)."""

    network: eqx.Module
    architecture: Architecture
    theta_lower: np.ndarray
    theta_upper: np.ndarray
    spacing_mm: float
    info: dict

    def normalise(self, theta):
        """Physical ``theta`` -> ``[-1, 1]`` over the training ranges."""
        return to_unit(jnp.asarray(theta), jnp.asarray(self.theta_lower), jnp.asarray(self.theta_upper))

    def denormalise(self, z):
        """``[-1, 1]`` -> physical ``theta`` over the training ranges (the inverse of ``normalise``)."""
        lo, hi = jnp.asarray(self.theta_lower), jnp.asarray(self.theta_upper)
        return lo + 0.5 * (jnp.asarray(z) + 1.0) * (hi - lo)

    def apply(self, z, tissue):
        """The forward network at normalised ``z (5,)`` (one crop; the theta channels are built from ``z``)."""
        return _forward(self.network, self.denormalise(z), z, tissue, self.architecture, self.spacing_mm)

    def _check(self, tissue, what="tissue", channels=2):
        n = self.architecture.size
        if tuple(np.shape(tissue)[-4:]) != (channels, n, n, n):
            raise ValueError(f"Surrogate: {what} must have shape (..., {channels}, {n}, {n}, {n}) (white and grey "
                             f"matter on the {n}^3 crop at {self.spacing_mm:g} mm it was trained on), got "
                             f"{np.shape(tissue)}.")

    def predict(self, theta, tissue):
        """Concentration ``u`` for physical ``theta`` (``(5,)`` or ``(B, 5)``) and ``tissue`` (``(2, n, n,
        n)`` or ``(B, 2, n, n, n)``). Differentiable in ``theta`` (jit it for speed)."""
        if self.architecture.kind != "forward":
            raise ValueError("Surrogate.predict needs a forward network; this one is an inverse encoder.")
        self._check(tissue)
        theta = jnp.asarray(theta)
        tissue = jnp.asarray(tissue, jnp.float32)
        return _predict(self.network, theta, tissue, jnp.asarray(self.theta_lower, jnp.float32),
                        jnp.asarray(self.theta_upper, jnp.float32), self.architecture, self.spacing_mm)

    def invert(self, u, tissue):
        """Direct prediction of physical ``theta`` from ``u`` (``(n, n, n)`` or batched) and ``tissue``."""
        if self.architecture.kind != "inverse":
            raise ValueError("Surrogate.invert needs an inverse encoder; this one is a forward network.")
        self._check(tissue)
        u, tissue = jnp.asarray(u, jnp.float32), jnp.asarray(tissue, jnp.float32)
        return self.denormalise(_invert(self.network, u, tissue))

    def header(self) -> dict:
        """The JSON header of the weights file."""
        return {"format": FORMAT, "architecture": dataclasses.asdict(self.architecture),
                "theta_lower": [float(v) for v in self.theta_lower],
                "theta_upper": [float(v) for v in self.theta_upper], "spacing_mm": float(self.spacing_mm),
                "info": self.info}

    def save(self, path) -> str:
        """Write the weights file atomically (a JSON line, then the leaves)."""
        path = os.fspath(path)
        with atomic_path(path, ".eqx") as tmp, open(tmp, "wb") as f:
            f.write((json.dumps(self.header()) + "\n").encode())
            eqx.tree_serialise_leaves(f, self.network)
        return path


def to_unit(theta, lo, hi):
    """``[lo, hi] -> [-1, 1]`` per parameter (numpy or JAX arrays)."""
    return 2.0 * (theta - lo) / (hi - lo) - 1.0


def _forward(network, theta, z, tissue, arch: Architecture, spacing_mm: float):
    """The forward network on one crop at physical ``theta`` (for the theta channels) and normalised ``z``."""
    channels = theta_channels(theta, arch.size, spacing_mm, arch.theta_channels).astype(tissue.dtype)
    return network(z, tissue, channels)


@eqx.filter_jit
def _predict(network, theta, tissue, lo, hi, arch, spacing):
    """``Surrogate.predict`` compiled once per shape (an eager call would compile every operation)."""

    def one(t, ti):
        z = to_unit(t, lo, hi).astype(jnp.float32)
        return _forward(network, t, z, ti, arch, spacing)

    return one(theta, tissue) if theta.ndim == 1 else jax.vmap(one)(theta, tissue)


@eqx.filter_jit
def _invert(network, u, tissue):
    """``Surrogate.invert`` on normalised parameters, compiled once per shape."""
    return network(u, tissue) if u.ndim == 3 else jax.vmap(network)(u, tissue)


def load(path) -> Surrogate:
    """Read a weights file written by ``Surrogate.save`` (no network access)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"surrogate weights {path} not found; train them with `bodil train-surrogate` or use "
                         f"bodil.forward.surrogate.pretrained().")
    with open(path, "rb") as f:
        try:
            header = json.loads(f.readline().decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{path} is not a bodil surrogate weights file (no JSON header).") from None
        if header.get("format") != FORMAT:
            raise InputError(f"{path} is not a bodil surrogate weights file (format {header.get('format')!r}).")
        arch = Architecture(**header["architecture"])
        # shapes only: initialising the network for real would run every layer's initialiser eagerly
        skeleton = eqx.filter_eval_shape(build, arch, jax.random.PRNGKey(0))
        try:
            network = eqx.tree_deserialise_leaves(f, skeleton)
        except (RuntimeError, ValueError, EOFError) as err:
            raise InputError(f"{path}: the weights do not fit the architecture in its header ({err}); the file is "
                             f"damaged or was written by an older bodil: train it again.") from None
    return Surrogate(network=network, architecture=arch, theta_lower=np.asarray(header["theta_lower"]),
                     theta_upper=np.asarray(header["theta_upper"]), spacing_mm=float(header["spacing_mm"]),
                     info=header.get("info", {}))


def pretrained(kind: str = "forward") -> Surrogate:
    """The weights shipped with bodil (``kind`` "forward" or "inverse"); ``weights/README.md`` gives the
    commands and dataset that made them (32^3 crops at 4 mm, MNI152 anatomy)."""
    _checks.choice("pretrained", "kind", kind, KINDS)
    return load(os.path.join(WEIGHTS_DIR, f"fk_{kind}.eqx"))


__all__: Sequence[str] = ["FORMAT", "Surrogate", "WEIGHTS_DIR", "load", "pretrained", "to_unit"]
