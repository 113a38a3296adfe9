"""Finite-difference stencils in flux form, built from slicing and ``jnp.roll`` only.

The diffusion operator of Amoudruz et al. 2025, appendix A (eq. 33) is

    A_i = sum_axes [ D_{i+1/2} (u_{i+1} - u_i) - D_{i-1/2} (u_i - u_{i-1}) ] / h^2,

with the face diffusivity ``D_{i+1/2} = (D_i + D_{i+1}) / 2``. Written as the divergence of face fluxes
``F_{i+1/2} = D_{i+1/2} (u_{i+1} - u_i) / h`` it conserves mass exactly: on a periodic axis the fluxes
telescope around the circle, and on a walled axis the two wall fluxes are zero (no flux), so
``sum_i A_i = 0`` for every ``u``.

Space axes are the trailing axes of ``u``; any leading axes (time, batch) are carried along.
Boundaries are built by slicing, not ``jnp.pad(mode="edge")``, which is slower on large grids.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

TISSUE_THRESHOLD = 0.1
"""Tissue fraction ``c_w + c_g`` below which a point is not tissue: faces touching it carry no flux
(GliODIL, Amoudruz et al. 2025). The default of every tissue mask in bodil."""


def _take(x, axis: int, start: int | None, stop: int | None):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def forward_difference(u, axis: int, periodic: bool):
    """``u_{i+1} - u_i`` on the faces along ``axis``: ``n`` faces if periodic, else the ``n - 1`` interior faces."""
    if periodic:
        return jnp.roll(u, -1, axis=axis) - u
    return _take(u, axis, 1, None) - _take(u, axis, None, -1)


def face_average(d, axis: int, periodic: bool):
    """``(d_i + d_{i+1}) / 2`` on the faces along ``axis`` (same face layout as ``forward_difference``)."""
    if periodic:
        return 0.5 * (d + jnp.roll(d, -1, axis=axis))
    return 0.5 * (_take(d, axis, 1, None) + _take(d, axis, None, -1))


def face_both(mask, axis: int, periodic: bool):
    """True on faces whose two neighbouring points are both inside ``mask``."""
    if periodic:
        return mask & jnp.roll(mask, -1, axis=axis)
    return _take(mask, axis, 1, None) & _take(mask, axis, None, -1)


def flux_difference(flux, axis: int, periodic: bool):
    """``F_{i+1/2} - F_{i-1/2}`` at the points; on a walled axis the wall fluxes are zero (no flux)."""
    if periodic:
        return flux - jnp.roll(flux, 1, axis=axis)
    if flux.shape[axis] == 0:  # a single point between two walls: nothing flows
        shape = list(flux.shape)
        shape[axis] = 1
        return jnp.zeros(shape, flux.dtype)
    inner = _take(flux, axis, 1, None) - _take(flux, axis, None, -1)
    return jnp.concatenate([_take(flux, axis, 0, 1), inner, -_take(flux, axis, -1, None)], axis=axis)


def face_diffusivities(diffusivity, shape: Sequence[int], spacing: Sequence[float], periodic: Sequence[bool],
                       tissue_mask=None):
    """Face diffusivities ``D_{i+1/2} / h^2`` along each space axis (Amoudruz et al. 2025, appendix A).

    Args:
        diffusivity: ``D`` at the points, broadcastable to the space ``shape``.
        shape: shape of the space grid.
        spacing: ``h`` per space axis.
        periodic: per space axis.
        tissue_mask: optional boolean array of the space shape; a face with a point outside the mask on
            either side carries no flux (no flux into CSF or background).

    Returns:
        A tuple with, for each space axis, ``D_{i+1/2} / h^2`` on its faces.
    """
    d = jnp.broadcast_to(jnp.asarray(diffusivity), tuple(shape))
    mask = None if tissue_mask is None else jnp.broadcast_to(jnp.asarray(tissue_mask, bool), tuple(shape))
    faces = []
    for axis, (h, per) in enumerate(zip(spacing, periodic)):
        f = face_average(d, axis, per)
        if mask is not None:
            f = jnp.where(face_both(mask, axis, per), f, 0.0)
        faces.append(f / h**2)
    return tuple(faces)


def diffusion_operator(u, faces: Sequence, periodic: Sequence[bool]):
    """``div(D grad u)`` in flux form (Amoudruz et al. 2025, eq. 33) over the trailing ``len(faces)`` axes of ``u``.

    ``faces`` comes from ``face_diffusivities`` (face ``D / h^2`` per axis) and broadcasts against the
    face arrays of ``u``.
    """
    nd = len(faces)
    out = 0.0
    for k, (f, per) in enumerate(zip(faces, periodic)):
        axis = k - nd
        out = out + flux_difference(f * forward_difference(u, axis, per), axis, per)
    return out


def operator_diagonal(faces: Sequence, periodic: Sequence[bool]):
    """Diagonal of ``diffusion_operator``: ``-sum_axes (D_{i+1/2} + D_{i-1/2}) / h^2`` (Jacobi preconditioning)."""
    nd = len(faces)
    out = 0.0
    for k, (f, per) in enumerate(zip(faces, periodic)):
        axis = k - nd
        if per:
            both = f + jnp.roll(f, 1, axis=axis)
        else:
            zero = jnp.zeros_like(_take(f, axis, 0, 1)) if f.shape[axis] else None
            if zero is None:
                continue
            both = jnp.concatenate([f, zero], axis=axis) + jnp.concatenate([zero, f], axis=axis)
        out = out - both
    return out
