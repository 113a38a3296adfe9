"""How close a predicted tumour concentration is to the true one (Weidner et al. 2025, sec. 2.3, Toledo-Marín et al. 2021, sec. 3).

For a prediction ``p`` and truth ``t`` on the same crop (``N`` voxels):

    MSE = sum (p - t)^2 / N                 MAE = sum |p - t| / N
    MSE_norm = MSE / V,   MAE_norm = MAE / V,     V = #{t >= volume_threshold}   (true tumour volume, voxels)
    NCC = sum (p - mean p)(t - mean t) / sqrt(sum (p - mean p)^2 sum (t - mean t)^2)

and Toledo-Marín et al.'s (2021) residual statistics of ``r = |p - t|``: its mean, 99th percentile and maximum. Every function
takes one field or a batch (leading axes) and returns one value per field.
"""

from __future__ import annotations

import numpy as np

VOLUME_THRESHOLD = 0.01
"""A voxel counts towards the true tumour volume ``V`` when ``t >= 0.01``."""


def _pair(pred, true):
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if p.shape != t.shape or p.ndim < 3:
        raise ValueError(f"metrics: prediction and truth must have one shape (..., n1, n2, n3), got {p.shape} and "
                         f"{t.shape}.")
    return p.reshape(p.shape[:-3] + (-1,)), t.reshape(t.shape[:-3] + (-1,))


def mse(pred, true):
    p, t = _pair(pred, true)
    return np.mean((p - t) ** 2, axis=-1)


def mae(pred, true):
    p, t = _pair(pred, true)
    return np.mean(np.abs(p - t), axis=-1)


def tumour_volume(true, threshold: float = VOLUME_THRESHOLD):
    """``V``: voxels with ``t >= threshold`` (per field)."""
    t = np.asarray(true, np.float64)
    return np.sum(t.reshape(t.shape[:-3] + (-1,)) >= threshold, axis=-1)


def ncc(pred, true):
    """Normalised cross-correlation (1 for fields equal up to a positive affine map; 0 if one is constant)."""
    p, t = _pair(pred, true)
    p = p - p.mean(axis=-1, keepdims=True)
    t = t - t.mean(axis=-1, keepdims=True)
    den = np.sqrt(np.sum(p * p, axis=-1) * np.sum(t * t, axis=-1))
    return np.where(den > 0, np.sum(p * t, axis=-1) / np.where(den > 0, den, 1.0), 0.0)


def residual_statistics(pred, true) -> dict:
    """Toledo-Marín et al.'s (2021) statistics of ``|p - t|``: ``mean``, ``p99`` (99th percentile) and ``max`` per field."""
    p, t = _pair(pred, true)
    r = np.abs(p - t)
    return {"residual_mean": r.mean(axis=-1), "residual_p99": np.percentile(r, 99, axis=-1),
            "residual_max": r.max(axis=-1)}


def field_metrics(pred, true, threshold: float = VOLUME_THRESHOLD) -> dict:
    """All of the above as a dict of arrays (one value per field): ``mse``, ``mae``, ``mse_norm``,
    ``mae_norm``, ``ncc``, ``residual_mean``, ``residual_p99``, ``residual_max``."""
    volume = np.maximum(tumour_volume(true, threshold), 1)
    out = {"mse": mse(pred, true), "mae": mae(pred, true)}
    out["mse_norm"] = out["mse"] / volume
    out["mae_norm"] = out["mae"] / volume
    out["ncc"] = ncc(pred, true)
    out.update(residual_statistics(pred, true))
    return out


__all__ = ["VOLUME_THRESHOLD", "field_metrics", "mae", "mse", "ncc", "residual_statistics", "tumour_volume"]
