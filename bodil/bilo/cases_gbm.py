"""Glioblastoma growth on an axial slice of the MNI152 brain (Zhang et al., "BiLO: Bilevel Local Operator Learning
for PDE inverse problems", sec. 3.6), for BiLO, the PINN and bodil's ODIL on the same segmentation.

On the square box ``[0, 1]^2`` (side ``side_mm``, centred on the tumour origin) and ``t in [0, 1]`` (``t_final``
days), with no-flux walls,

    u_t = D div(m(x) grad u) + rho u (1 - u),   u(x, 0) = 0.1 exp(-|x - c|^2 / (2 s^2)),

where the mobility ``m = c_w + c_g / 10`` comes from the white- and grey-matter fractions of the slice (bodil's
``Dg = Dw / 10``), given at the ``n x n`` nodes and bilinear in between, ``c`` is the box centre and ``s`` is
``seed_mm``. ``D = Dw t_final / side_mm^2`` and ``rho = rho_day t_final`` are the nondimensional parameters to infer
(the authors' ``rD``, ``rRHO`` scale them). Defaults: ``Dw = 0.5 mm^2/day``, ``rho = 0.045 /day``, 150 days, a
64 mm box around bodil's default origin in the left white matter (``bodil.tumor.synthetic``).

The truth is grown by bodil's explicit flux-form solver (``bodil.forward.fd.solve_reaction_diffusion``) on the
nodes refined ``refine`` times; the segmentation thresholds it at ``t = 1`` as bodil's synthetic patients do
(edema ``tau_edema = 0.25``, enhancing core ``tau_core = 0.675``, BraTS 2021 labels mapped to likelihood classes
by ``bodil.tumor.segmentation.classes_from_labels``), on the tissue nodes (``c_w + c_g >= 0.1``) only.

Data loss (the authors' segmentation loss): with the smooth threshold ``H_k(u) = S(K (u - tau_k))``
(``K = 20``, ``S`` the logistic function), whole tumour (``u >= tau_edema``) and core (``u >= tau_core``),

    L_dat = (1 / 2) sum_k mean_j (H_k(u(x_j, 1)) - seg_k(x_j))^2 / mean_j seg_k(x_j)^2,

written as a ``PointwiseProblem`` with ``link``: the tissue nodes appear twice among the data points, once per
threshold. Networks: ``u = u(x, 0) + t u_raw`` (exact initial values, the authors' transform), or
``u = S(logit u(x, 0) + t u_raw)`` with the squared distance from the seed as an extra input (``make_transform``,
``seed_features``), which a small network on a CPU can fit. The residual is evaluated at ``n_res`` space-time
nodes of ``grid`` drawn once (in tissue, ``seed``).

ODIL (``odil_posterior``): bodil's Crank-Nicolson residual (``bodil.residuals.reaction_diffusion``) on ``grid``, the
initial values as a second block, and the same data loss as a Gaussian block on the linked values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from .._checks import integer, positive, seed_words
from ..forward.fd import solve_reaction_diffusion
from ..grid import Grid
from ..likelihood import ABOVE, BETWEEN, UNOBSERVED, Gaussian
from ..posterior import Posterior
from ..prior import Params, PDEPrior, Uniform
from ..residuals.reaction_diffusion import reaction_diffusion
from ..stencil import TISSUE_THRESHOLD
from . import losses as L
from .cases_darcy import node_points, to_eval

SHARPNESS = 20.0
AMPLITUDE = 0.1
TRANSFORMS = ("additive", "logistic")


def brain_slice(anatomy=None, *, n: int = 32, side_mm: float = 64.0, origin=None) -> dict:
    """White- and grey-matter fractions on the ``n x n`` nodes of an axial square of side ``side_mm`` centred on
    ``origin`` (world mm; default ``bodil.tumor.synthetic.default_origin``), by trilinear interpolation of
    ``anatomy`` (default ``bodil.tumor.anatomy.mni152(2)``). Returns ``{"wm", "gm", "origin"}``."""
    from ..tumor.anatomy import mni152
    from ..tumor.synthetic import default_origin

    n = integer("brain_slice", "n", n, 3)
    positive("brain_slice", "side_mm", side_mm)
    anatomy = mni152(2) if anatomy is None else anatomy
    origin = default_origin(anatomy) if origin is None else np.asarray(origin, float)
    offsets = (np.linspace(0.0, 1.0, n) - 0.5) * side_mm
    gx, gy = np.meshgrid(offsets, offsets, indexing="ij")
    world = np.stack([origin[0] + gx, origin[1] + gy, np.full_like(gx, origin[2])], axis=-1).reshape(-1, 3)
    a = np.asarray(anatomy.affine, float)
    vox = np.linalg.solve(a[:3, :3], (world - a[:3, 3]).T)
    out = {name: ndimage.map_coordinates(np.asarray(getattr(anatomy, name), float), vox, order=1).reshape(n, n)
           for name in ("wm", "gm")}
    return {**out, "origin": origin}


def mobility(wm, gm, ratio: float = 0.1):
    """``m = c_w + ratio c_g`` (``Dg = ratio Dw``)."""
    return np.asarray(wm, float) + ratio * np.asarray(gm, float)


def bilinear(values, y):
    """Bilinear interpolation at the point ``y`` (shape ``(2,)``, in ``[0, 1]^2``) of node values ``(n, n)``
    (differentiable in ``y``: piecewise linear)."""
    n = values.shape[0] - 1
    s = jnp.clip(y * n, 0.0, float(n))
    i = jnp.clip(jnp.floor(s), 0, n - 1)
    f = s - i
    i0, i1 = i.astype(jnp.int32), i.astype(jnp.int32) + 1
    v = jnp.asarray(values, y.dtype)
    return ((1 - f[0]) * (1 - f[1]) * v[i0[0], i0[1]] + f[0] * (1 - f[1]) * v[i1[0], i0[1]]
            + (1 - f[0]) * f[1] * v[i0[0], i1[1]] + f[0] * f[1] * v[i1[0], i1[1]])


def _log_initial_profile(xy, seed_width: float):
    """``log u(x, 0) = log 0.1 - |x - c|^2 / (2 s^2)``."""
    xy = jnp.asarray(xy)
    r2 = jnp.sum((xy - 0.5) ** 2, axis=-1)
    return jnp.log(jnp.asarray(AMPLITUDE, xy.dtype)) - 0.5 * r2 / seed_width**2


def initial_profile(xy, seed_width: float):
    """``u(x, 0) = 0.1 exp(-|x - c|^2 / (2 s^2))``, ``c = (0.5, 0.5)``, ``s = seed_width`` (box units)."""
    return jnp.exp(_log_initial_profile(xy, seed_width))


def make_operator(mob):
    """``r = u_t - D div(m grad u) - rho u (1 - u)`` at ``z = (t, x, y)`` with ``m`` bilinear in the node values."""
    mob = np.asarray(mob, float)

    def operator(u, z, theta):
        e = jnp.eye(3, dtype=z.dtype)
        u_z, u_t = jax.jvp(u, (z,), (e[0],))
        div = jnp.zeros((), z.dtype)
        for d in (1, 2):
            flux = lambda y, d=d: bilinear(mob, y[1:]) * jax.jvp(u, (y,), (e[d],))[1]  # noqa: E731
            div = div + jax.jvp(flux, (z,), (e[d],))[1]
        return u_t - theta["D"] * div - theta["rho"] * u_z * (1.0 - u_z)
    return operator


def initial_logit(xy, seed_width: float):
    """``logit u(x, 0) = log 0.1 - |x - c|^2 / (2 s^2) - log(1 - u(x, 0))``, written so that it stays finite where
    ``u(x, 0)`` underflows."""
    log_u0 = _log_initial_profile(xy, seed_width)
    return log_u0 - jnp.log1p(-jnp.exp(log_u0))


def make_transform(seed_width: float, kind: str = "additive"):
    """The network's output transform, exact at ``t = 0``: ``"additive"``, ``u = u(x, 0) + t u_raw`` (the
    authors'), or ``"logistic"``, ``u = S(logit u(x, 0) + t u_raw)`` (``S`` the logistic function): ``u`` stays in
    ``(0, 1)`` and the front, a steep sigmoid in ``u``, is a smooth slope in ``u_raw``."""
    from .._checks import choice

    choice("make_transform", "kind", kind, TRANSFORMS)
    if kind == "additive":
        def transform(z, raw):
            return initial_profile(z[1:], seed_width) + z[0] * raw
    else:
        def transform(z, raw):
            return jax.nn.sigmoid(initial_logit(z[1:], seed_width) + z[0] * raw)
    return transform


def seed_features(z):
    """Input features ``(t, x, y, 4 |x - c|^2)`` (``bodil.bilo.local_operator_net(features=...)``): the squared
    distance from the seed's centre ``c`` (known, it is the initial condition's), scaled to ``[0, 2]``, lets a
    small network draw a front that spreads from the seed."""
    return jnp.concatenate([z, 4.0 * jnp.sum((z[1:] - 0.5) ** 2, keepdims=True)])


def smooth_threshold(u, tau):
    """``S(K (u - tau))`` with ``K = 20`` (the authors' smooth Heaviside)."""
    return jax.nn.sigmoid(SHARPNESS * (u - tau))


def dice(a, b) -> float:
    """``2 |a & b| / (|a| + |b|)`` of two boolean masks (1 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.sum(a & b) / total)


@dataclasses.dataclass(frozen=True, eq=False)
class GBMCase:
    """The case: ``PointwiseProblem``, the ``(t, x, y)`` node ``grid`` (evaluation and ODIL), the mobility at the
    space nodes, truth and initial guess (nondimensional ``D``, ``rho``), the segmentation ``classes`` at ``t = 1``
    (``bodil.likelihood`` classes; ``UNOBSERVED`` outside tissue), the true field at ``t = 1`` (``clean``), the
    pre-training target and the defining ``settings``."""

    problem: L.PointwiseProblem
    grid: Grid
    mobility: np.ndarray
    truth: dict
    theta0: dict
    classes: np.ndarray
    clean: np.ndarray
    pretrain: tuple
    settings: dict

    def initial(self, n: int | None = None) -> np.ndarray:
        """``u(x, 0)`` on the ``n x n`` nodes (default the grid's)."""
        n = self.grid.shape[1] if n is None else n
        return np.asarray(initial_profile(node_points(n), self.settings["seed_width"])).reshape(n, n)

    def reference(self, theta) -> np.ndarray:
        """bodil's explicit solve at ``theta`` on the nodes refined ``refine`` times, at the grid's nodes and times,
        shape ``grid.shape``."""
        r, n = self.settings["refine"], self.grid.shape[1]
        nf = r * (n - 1) + 1
        space = Grid(shape=(nf, nf), lower=0.0, upper=1.0, names=("x", "y"), layout=("node", "node"))
        d = float(theta["D"]) * to_eval(self.mobility, nf)
        u = solve_reaction_diffusion(jnp.asarray(self.initial(nf)), space, d, float(theta["rho"]), 1.0,
                                     times=self.grid.coordinates("t"), safety=self.settings["safety"])
        return np.asarray(u)[:, ::r, ::r]

    def segment(self, u_final) -> tuple[np.ndarray, np.ndarray]:
        """Whole tumour (``u >= tau_edema``) and core (``u >= tau_core``) masks of a field at ``t = 1``, in tissue."""
        s, tissue = self.settings, self.classes != UNOBSERVED
        u_final = np.asarray(u_final)
        return tissue & (u_final >= s["tau_edema"]), tissue & (u_final >= s["tau_core"])


def segmentation_classes(u_final, tissue, tau_edema: float, tau_core: float) -> np.ndarray:
    """BraTS 2021 labels (2 edema, 4 enhancing) of ``u`` by thresholds, mapped to likelihood classes by
    ``bodil.tumor.segmentation.classes_from_labels``; ``UNOBSERVED`` where ``tissue`` is False."""
    from ..tumor.segmentation import classes_from_labels
    from ..tumor.synthetic import EDEMA_LABEL, ENHANCING

    u_final = np.asarray(u_final)
    labels = np.zeros(u_final.shape, np.uint8)
    labels[u_final >= tau_edema] = EDEMA_LABEL
    labels[u_final >= tau_core] = ENHANCING
    classes = classes_from_labels(labels, "brats2021").astype(np.int32)
    return np.where(tissue, classes, UNOBSERVED)


def _link(tau, weight):
    tau, weight = np.asarray(tau), np.asarray(weight)

    def link(pred):
        return jnp.asarray(weight, pred.dtype) * smooth_threshold(pred, jnp.asarray(tau, pred.dtype))
    return link


def glioblastoma(*, tissue: tuple | None = None, n: int = 32, n_t: int = 11, side_mm: float = 64.0,
                 dw: float = 0.5, rho: float = 0.045, t_final: float = 150.0, theta0_factor=(1.5, 0.7),
                 seed_mm: float = 3.0, tau_edema: float = 0.25, tau_core: float = 0.675, refine: int = 2,
                 safety: float = 0.5, n_res: int = 2048, seed=0) -> GBMCase:
    """Zhang et al., sec. 3.6: ``(D, rho)`` from a two-threshold segmentation at ``t = 1`` (module docstring).

    Args:
        tissue: ``(wm, gm)`` fractions on the ``n x n`` nodes (default: ``brain_slice(n=n, side_mm=side_mm)`` of
            MNI152, which takes seconds to load).
        n, n_t: space nodes per axis and time nodes of ``grid``.
        side_mm, dw, rho, t_final: box side (mm), white-matter diffusivity (mm^2/day), proliferation (/day), days.
        theta0_factor: the initial guess is the truth times these factors (``D``, ``rho``).
        seed_mm: width of the initial Gaussian (mm).
        tau_edema, tau_core: segmentation thresholds.
        refine: refinement of the space nodes for the reference solve; ``safety``: its fraction of the stable step.
        n_res: residual points (space-time nodes of ``grid`` in tissue, drawn with ``seed``; at most all of them).
        seed: integer or ``jax.random`` key.

    Returns:
        ``GBMCase``.

    Raises:
        ValueError: tissue maps of the wrong shape, or a segmentation without a core or whole tumour.
    """
    n, n_t = integer("glioblastoma", "n", n, 3), integer("glioblastoma", "n_t", n_t, 2)
    refine, n_res = integer("glioblastoma", "refine", refine, 1), integer("glioblastoma", "n_res", n_res, 1)
    for name, v in (("side_mm", side_mm), ("dw", dw), ("rho", rho), ("t_final", t_final), ("seed_mm", seed_mm)):
        positive("glioblastoma", name, v)
    if not 0 < tau_edema < tau_core < 1:
        raise ValueError(f"glioblastoma: need 0 < tau_edema < tau_core < 1, got {tau_edema}, {tau_core}.")
    wm, gm = (brain_slice(n=n, side_mm=side_mm)[k] for k in ("wm", "gm")) if tissue is None else tissue
    wm, gm = np.asarray(wm, float), np.asarray(gm, float)
    if wm.shape != (n, n) or gm.shape != (n, n):
        raise ValueError(f"glioblastoma: tissue maps must have shape ({n}, {n}), got {wm.shape}, {gm.shape}.")
    truth = {"D": dw * t_final / side_mm**2, "rho": rho * t_final}
    theta0 = {k: v * f for (k, v), f in zip(truth.items(), theta0_factor)}
    grid = Grid(shape=(n_t, n, n), lower=0.0, upper=1.0, names=("t", "x", "y"), layout=("node",) * 3)
    settings = dict(n=n, n_t=n_t, side_mm=float(side_mm), dw=float(dw), rho_day=float(rho), t_final=float(t_final),
                    seed_width=float(seed_mm / side_mm), tau_edema=float(tau_edema), tau_core=float(tau_core),
                    refine=refine, safety=float(safety), n_res=n_res)
    mob = mobility(wm, gm)
    draft = GBMCase(None, grid, mob, truth, theta0, None, None, None, settings)
    u_true = draft.reference(truth)
    in_tissue = (wm + gm) >= TISSUE_THRESHOLD
    classes = segmentation_classes(u_true[-1], in_tissue, tau_edema, tau_core)
    points, values, link = _segmentation_data(classes, (tau_edema, tau_core))
    all_points = _grid_points(grid)
    tissue_rows = np.flatnonzero(np.tile(in_tissue.ravel(), n_t))
    rng = np.random.default_rng(seed_words("glioblastoma", seed))
    rows = np.sort(rng.choice(tissue_rows, size=min(n_res, tissue_rows.size), replace=False))
    problem = L.PointwiseProblem(make_operator(mob), all_points[rows], points, values, ("D", "rho"),
                                 (theta0["D"], theta0["rho"]), ("t", "x", "y"), link=link)
    pre = (all_points, draft.reference(theta0).ravel())
    return dataclasses.replace(draft, problem=problem, classes=classes, clean=u_true[-1], pretrain=pre)


def _segmentation_data(classes, taus):
    """Data points (the tissue nodes at ``t = 1``, once per threshold), values ``w_k seg_k`` and the link
    ``w_k H_k(u)`` with ``w_k = mean(seg_k)^(-1/2)`` (module docstring)."""
    tissue = classes != UNOBSERVED
    segs = [classes[tissue] >= BETWEEN, classes[tissue] == ABOVE]
    if not segs[1].any():
        raise ValueError("glioblastoma: no tissue node is above tau_core at t = 1; grow longer (t_final, rho) or "
                         "lower tau_core.")
    xy = node_points(classes.shape[0])[tissue.ravel()]
    points = np.concatenate([np.column_stack([np.ones(len(xy)), xy])] * 2)
    weight = np.concatenate([np.full(len(xy), 1.0 / np.sqrt(np.mean(s))) for s in segs])
    tau = np.concatenate([np.full(len(xy), t) for t in taus])
    return points, weight * np.concatenate(segs).astype(float), _link(tau, weight)


def _grid_points(grid: Grid) -> np.ndarray:
    axes = np.meshgrid(*(grid.coordinates(k) for k in grid.names), indexing="ij")
    return np.stack([a.ravel() for a in axes], axis=1)


def network_field(net, case: GBMCase, p) -> np.ndarray:
    """The network solution on ``case.grid`` at scaled parameters ``p``, shape ``grid.shape``."""
    return np.asarray(L.predict(net, jnp.asarray(p), _grid_points(case.grid))).reshape(case.grid.shape)


def data_loss(case: GBMCase, u_final) -> float:
    """``L_dat`` (module docstring) of a field at ``t = 1`` on the space nodes."""
    tissue = case.classes != UNOBSERVED
    pred = np.concatenate([np.asarray(u_final)[tissue]] * 2)
    return float(np.mean((np.asarray(case.problem.link(jnp.asarray(pred))) - case.problem.data_values) ** 2))


def metrics(case: GBMCase, theta: dict, field) -> dict[str, float]:
    """``err_D``, ``err_rho``: relative errors; ``err_u``: relative L2 error of ``field`` (on ``case.grid``) against
    the reference solve at ``theta``; ``dice``: Dice of the whole tumour of ``field`` at ``t = 1`` against the data;
    ``dice_fd``, ``dice_core_fd``: whole tumour and core of the reference solve at ``theta`` (the predicted
    segmentation); ``data``: ``L_dat`` of ``field``."""
    field = np.asarray(field)
    case.grid.check_field(field, "metrics: field")
    out = {f"err_{k}": abs(float(theta[k]) - v) / v for k, v in case.truth.items()}
    data_wt, data_tc = case.segment(case.clean)
    if float(theta["D"]) > 0:
        ref = case.reference(theta)
        out["err_u"] = float(np.linalg.norm(field - ref) / np.linalg.norm(ref))
        wt, tc = case.segment(ref[-1])
        out["dice_fd"], out["dice_core_fd"] = dice(wt, data_wt), dice(tc, data_tc)
    else:
        out["err_u"] = out["dice_fd"] = out["dice_core_fd"] = float("nan")
    out["dice"] = dice(case.segment(field[-1])[0], data_wt)
    out["data"] = data_loss(case, field[-1])
    return out


# ---------------------------------------------------------------------------------------------- ODIL
def odil_posterior(case: GBMCase, *, beta: float = 1e8, beta_initial: float = 1e10,
                   sigma: float = 0.25, dtype=None) -> tuple[Posterior, Any, dict]:
    """ODIL's posterior on ``case.grid`` and its starting point ``(u0, theta0)``.

    Crank-Nicolson residual of ``u_t = D div(m grad u) + rho u (1 - u)`` (``beta``, mean), initial values
    (``beta_initial``), and the data loss as a Gaussian block ``sum_j (link(u)_j - y_j)^2 / (2 sigma^2)`` (so the
    MAP minimises ``n_data L_dat / (2 sigma^2) + beta L_PDE``); ``D`` and ``rho`` uniform on ``[0.1, 10]`` times
    the initial guess. The start is the reference solve at the initial guess.
    """
    mob = jnp.asarray(case.mobility)
    tissue = case.classes != UNOBSERVED
    idx = jnp.asarray(np.concatenate([np.flatnonzero(tissue.ravel())] * 2))
    u_init = jnp.asarray(case.initial())
    residual = reaction_diffusion(lambda th, g: th["D"] * mob.astype(jnp.result_type(th["D"])), "rho")
    prior = PDEPrior(residual, case.grid, beta, initial=lambda u, th, g: {"initial": u[0] - u_init.astype(u.dtype)},
                     beta_initial=beta_initial)
    lik = Gaussian(lambda u, th: case.problem.link(u[-1].ravel()[idx]), case.problem.data_values, sigma)
    params = Params(**{k: Uniform(0.1 * v, 10.0 * v) for k, v in case.theta0.items()})
    dtype = dtype or jnp.zeros(()).dtype
    u0 = jnp.asarray(case.pretrain[1].reshape(case.grid.shape), dtype)
    return Posterior(prior, lik, params), u0, {k: jnp.asarray(v, dtype) for k, v in case.theta0.items()}
