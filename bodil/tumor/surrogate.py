"""The neural surrogate (``bodil.forward.surrogate``) on a patient: a forward model of the tumour pipeline.

The surrogate was trained on crops of ``n^3`` voxels at spacing ``h_s`` centred on the tumour's centre of
mass. ``SurrogateBox`` places such a crop on the patient, centred on the visible tumour's centre of mass,
fills it with the patient's tissue, and maps the tumour model's parameters to the surrogate's,

    offset = x_0 - (crop centre)  (mm),   mu_D = sqrt(Dw T),   mu_rho = sqrt(rho T)    (Weidner et al. 2025, sec. 2.1)

(the surrogate's ``Dg = Dw / 10``: the model's ``ratio`` must be 10). The predicted concentration is
carried onto the model's box by separable multilinear interpolation (both boxes are aligned with the input
voxel axes), so ``field(theta)`` is a differentiable JAX function: the pipeline uses it as the forward
model of the mode approximation (``Settings.inner = "surrogate"``: one network call per BASIS evaluation)
and to start the MAP (``Settings.initializer = "surrogate"``: L-BFGS-B through the surrogate instead of
Nelder-Mead on FK runs).

The shipped weights were trained on the MNI152 atlas in its own orientation; inputs in another orientation
or far from the atlas's anatomy are outside what the network has seen.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..forward.surrogate import Surrogate
from ..io import InputError
from .anatomy import Anatomy, Crop
from .model import ORIGIN, TumorModel


def _interpolation_matrix(box: Crop, crop: Crop, axis: int) -> np.ndarray:
    """``W (box.n, crop.n)``: linear interpolation of a ``crop`` axis at ``box``'s points (zero outside)."""
    v = box.start[axis] + (np.arange(box.n) + 0.5) * box.step[axis]
    a = (v - crop.start[axis]) / crop.step[axis] - 0.5
    w = np.zeros((box.n, crop.n))
    lo = np.floor(a).astype(int)
    frac = a - lo
    for i in range(box.n):
        for j, weight in ((lo[i], 1.0 - frac[i]), (lo[i] + 1, frac[i])):
            if 0 <= j < crop.n:
                w[i, j] += weight
    w[(a < -0.5) | (a > crop.n - 0.5)] = 0.0
    return w


class SurrogateBox:
    """A surrogate crop on the patient and the map of its field onto the tumour model's box.

    Args:
        surrogate: a forward network (``bodil.forward.surrogate.pretrained()``).
        anatomy: the patient's tissue on the input grid.
        visible: the visible tumour (edema or core) on the input grid; the crop is centred on its centre of mass.
        box: the tumour model's box (``bodil.tumor.crop_around``).
        t_final: the model's ``T`` (days).
    """

    def __init__(self, surrogate: Surrogate, anatomy: Anatomy, visible: np.ndarray, box: Crop, t_final: float):
        if surrogate.architecture.kind != "forward":
            raise ValueError("SurrogateBox needs a forward surrogate, got an inverse encoder.")
        mask = np.asarray(visible, bool)
        if not mask.any():
            raise InputError("SurrogateBox: the tumour mask is empty.")
        n, h = surrogate.architecture.size, surrogate.spacing_mm
        step = h / np.asarray(box.input_spacing)
        centre = np.argwhere(mask).mean(axis=0)
        self.crop = Crop(n=n, input_shape=box.input_shape, input_affine=box.input_affine,
                         start=tuple(centre - 0.5 * n * step), side_mm=n * h)
        tissue = anatomy.crop(self.crop)
        self.tissue = np.stack([tissue.wm, tissue.gm]).astype(np.float32)
        self.surrogate, self.box, self.t_final = surrogate, box, float(t_final)
        self.matrices = tuple(jnp.asarray(_interpolation_matrix(box, self.crop, k), jnp.float32) for k in range(3))

    def surrogate_theta(self, theta):
        """The tumour model's ``theta`` (dict: ``Dw``, ``rho``, ``x0``, ``y0``, ``z0`` in the box frame) -> the
        surrogate's ``(x, y, z, mu_D, mu_rho)`` (JAX, differentiable)."""
        origin_box = jnp.stack([jnp.asarray(theta[c]) for c in ORIGIN])
        # box frame -> input voxel -> surrogate crop frame (both aligned with the input axes)
        voxel = jnp.asarray(self.box.start) + origin_box / jnp.asarray(self.box.input_spacing)
        in_crop = (voxel - jnp.asarray(self.crop.start)) * jnp.asarray(self.crop.input_spacing)
        offset = in_crop - 0.5 * self.crop.side_mm
        return jnp.concatenate([offset, jnp.sqrt(jnp.stack([theta["Dw"], theta["rho"]]) * self.t_final)])

    def in_range(self, theta) -> bool:
        """Whether the surrogate's parameters at ``theta`` lie inside its training box."""
        s = np.asarray(self.surrogate_theta(theta))
        return bool(np.all(s >= self.surrogate.theta_lower) and np.all(s <= self.surrogate.theta_upper))

    def crop_field(self, theta):
        """The surrogate's concentration on its own crop."""
        return self.surrogate.predict(self.surrogate_theta(theta).astype(jnp.float32), self.tissue)

    def field(self, theta):
        """The concentration at imaging time on the tumour model's box (JAX, differentiable in ``theta``)."""
        w0, w1, w2 = self.matrices
        return jnp.einsum("ia,jb,kc,abc->ijk", w0, w1, w2, self.crop_field(theta))


def surrogate_box(model: TumorModel, surrogate: Surrogate, anatomy: Anatomy, visible, box: Crop) -> SurrogateBox:
    """``SurrogateBox`` for a tumour model (its ``T``); the model must fix ``ratio = Dw / Dg`` at 10."""
    params = model.posterior.params
    if "ratio" in params.priors or abs(float(params.fixed.get("ratio", 10.0)) - 10.0) > 1e-9:
        raise InputError("the neural surrogate was trained with Dg = Dw / 10; fix the tumour model's ratio at 10 "
                         "(do not infer it) to use it.")
    return SurrogateBox(surrogate, anatomy, visible, box, model.settings["t_final"])


def fit_surrogate(model: TumorModel, sbox: SurrogateBox, theta0: dict, *, maxiter: int = 200) -> dict:
    """Start of the MAP from the surrogate: maximise ``log p(D | u_s(theta), theta) + log p(theta)`` over the
    model's inferred parameters by L-BFGS-B in unconstrained coordinates, with the surrogate's exact gradient
    (Weidner et al.'s (2025) gradient-based inversion, here against the segmentation's likelihood)."""
    import scipy.optimize

    params = model.posterior.params
    names = list(params.priors)
    z0 = params.unconstrain({k: jnp.asarray(theta0[k], jnp.float64) for k in names})
    w0 = np.array([float(z0[k]) for k in names])

    def objective(w):
        theta = params.constrain({k: w[i] for i, k in enumerate(names)})
        full = params.merge(theta)
        u_final = sbox.field(full).astype(jnp.float64)
        nll = -sum(lik.log_prob(u_final[None], full) for lik in model.posterior.likelihoods)
        return nll - params.log_prob(theta)

    value_and_grad = jax.jit(jax.value_and_grad(objective))

    def fun(w):
        v, g = value_and_grad(jnp.asarray(w))
        v, g = float(v), np.asarray(g, float)
        if not (math.isfinite(v) and np.all(np.isfinite(g))):
            return 1e300, np.zeros_like(w)
        return v, g

    # the interval likelihood is piecewise linear: the line search ends in failure at its kinks, and scipy's
    # 20 tries per search only spend evaluations (demo patient: the same minimum, 36 evaluations instead of 71)
    res = scipy.optimize.minimize(fun, w0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter, "maxls": 8})
    theta = params.constrain({k: jnp.asarray(v) for k, v in zip(names, res.x)})
    return {k: float(v) for k, v in theta.items()}


__all__ = ["SurrogateBox", "fit_surrogate", "surrogate_box"]
