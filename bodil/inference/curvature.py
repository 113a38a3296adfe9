"""Curvature operators of ``f(v) = -log p(v | D)`` at a point, for the Laplace approximation.

With ``v = (u, theta)`` flattened (theta constrained), the blocks of ``f`` (``bodil.terms``) split into the
PDE prior on the field (the groups ``terms.FIELD_PRIOR``) and the rest (data, parameter prior). Least-squares
blocks ``w |r|^2`` contribute their Gauss-Newton curvature ``2 w J^T J``, scalar blocks their exact Hessian:

    P v = G^T G v + H_{S,prior} v,     M v = J_D^T J_D v + H_{S,rest} v,     H ~ P + M,

with ``G`` (``J_D``) the Jacobian of the scaled prior (other) residuals ``sqrt(2 w) r``. ``Curvature`` gives
these as matrix-free products; ``FieldOperators`` applies their field blocks, and ``P^{-1}``, to blocks of
vectors by jitted, batched functions.

``P^{-1}`` is an exact forward and backward time march (``bodil.optimize.preconditioner.time_march``) for
Crank-Nicolson reaction-diffusion problems with an initial-condition term and no capped reaction block;
otherwise a CG solve with ``P`` (preconditioned by the march where it applies), whose result is ``nan`` where
CG fails (``P`` singular or indefinite).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..optimize.cg import truncated_cg
from ..optimize.objective import Objective
from ..optimize.preconditioner import applies_time_marching, capped_points, time_march
from ..terms import FIELD_PRIOR, Scalar, Squares, select


class Curvature:
    """Curvature operators of ``f(v) = -log p(v | D)`` at ``x`` in flat constrained coordinates.

    Args:
        posterior: a ``bodil.Posterior``.
        unravel: flat vector -> ``(u, theta)`` (from ``jax.flatten_util.ravel_pytree``).
        x: the point, flat (field first, then parameters).
        n_field: the number of field unknowns (the first ``n_field`` entries of ``x``).
    """

    def __init__(self, posterior, unravel, x, n_field: int):
        self.posterior, self.unravel, self.x, self.n_field = posterior, unravel, x, n_field

        def blocks(v):
            return posterior.blocks(*unravel(v))

        def residuals(v, prior: bool):
            return {k: jnp.sqrt(2.0 * b.weight) * b.residual
                    for k, b in select(blocks(v), FIELD_PRIOR, Squares, inside=prior).items()}

        def scalar(v, prior: bool):
            return sum((b.value() for b in select(blocks(v), FIELD_PRIOR, Scalar, inside=prior).values()),
                       jnp.zeros((), v.dtype))

        self.blocks = blocks
        self.value = lambda v: sum((b.value() for b in blocks(v).values()), jnp.zeros((), v.dtype))
        self._residuals = residuals
        self.grad_scalar_prior = jax.grad(lambda v: scalar(v, True))
        self.grad_scalar_data = jax.grad(lambda v: scalar(v, False))

    @functools.cached_property
    def jvp_prior(self):
        return jax.linearize(lambda v: self._residuals(v, True), self.x)[1]

    @functools.cached_property
    def vjp_prior(self):
        return jax.linear_transpose(self.jvp_prior, self.x)

    @functools.cached_property
    def jvp_data(self):
        return jax.linearize(lambda v: self._residuals(v, False), self.x)[1]

    @functools.cached_property
    def vjp_data(self):
        return jax.linear_transpose(self.jvp_data, self.x)

    @functools.cached_property
    def has_initial_condition(self) -> bool:
        """Whether the PDE prior has an initial-condition block (group ``ic``)."""
        return bool(select(jax.eval_shape(self.blocks, self.x), "ic"))

    def at(self, x):
        """The same operators linearised at ``x`` (use inside a ``jit``: linearisations must not leak out)."""
        return Curvature(self.posterior, self.unravel, x, self.n_field)

    def embed(self, v_u):
        return jnp.concatenate([v_u, jnp.zeros(self.x.size - self.n_field, v_u.dtype)])

    def prior_curvature(self, v):
        """``P v = G^T G v + H_{S,prior} v`` (the PDE prior's Gauss-Newton curvature), full space."""
        return self.vjp_prior(self.jvp_prior(v))[0] + jax.jvp(self.grad_scalar_prior, (self.x,), (v,))[1]

    def data_curvature(self, v):
        """``M v``: data and parameter-prior curvature (Gauss-Newton for least squares, exact for scalars)."""
        return self.vjp_data(self.jvp_data(v))[0] + jax.jvp(self.grad_scalar_data, (self.x,), (v,))[1]

    def curvature(self, v):
        """``(P + M) v``: the Gauss-Newton Hessian of ``f``."""
        return self.prior_curvature(v) + self.data_curvature(v)

    def field(self, op):
        """Restrict a full-space operator to the field block."""
        return lambda v_u: op(self.embed(v_u))[: self.n_field]

    def prior_logdet(self, hessian: str):
        """A compiled ``x -> log det P(x)`` of the field's PDE-prior curvature at the point ``x`` (``nan`` where
        ``P`` is not positive definite): the exact Hessian of the prior terms in ``u`` or their Gauss-Newton part."""
        eye = jnp.eye(self.n_field, dtype=self.x.dtype)

        def logdet(x):
            if hessian == "exact":
                def prior_value(v_u):
                    v = self.embed(v_u) + x
                    return sum((b.value() for b in select(self.blocks(v), FIELD_PRIOR).values()),
                               jnp.zeros((), v.dtype))
                P = jax.hessian(prior_value)(jnp.zeros(self.n_field, x.dtype))
            else:
                P = jax.vmap(self.at(x).field_prior)(eye)
            chol = jnp.linalg.cholesky(0.5 * (P + P.T))
            return jnp.where(jnp.all(jnp.isfinite(chol)), 2.0 * jnp.sum(jnp.log(jnp.diag(chol))), jnp.nan)
        return jax.jit(logdet)

    def field_prior(self, v_u):
        """``P_uu v_u``: the field block of the PDE prior's curvature."""
        return self.field(self.prior_curvature)(v_u)

    def prior_products(self):
        """A compiled ``(x, vs) -> P(x) v`` for the rows ``v`` of ``vs`` (the field block)."""
        return jax.jit(lambda x, vs: jax.vmap(self.at(x).field_prior)(vs))


class FieldOperators:
    """The field blocks ``P``, ``M``, ``P^{-1}`` and the full ``H = P + M`` of a ``Curvature``, applied to the
    rows of an array in padded blocks of ``CHUNK`` rows by jitted functions of the point (each rebuilds the
    linearisation inside its trace), so that each compiles once whatever the number of rows.

    Within a block, rows are mapped ``vmap_width`` at a time (``jax.lax.map``): all at once for small fields,
    one by one for large ones, whose linearised residuals would otherwise keep ``CHUNK`` copies of every
    intermediate, and whose batched CG loops would run to the slowest row. Memory is ``O(CHUNK n)``.

    Args:
        curvature: the ``Curvature`` at the MAP.
        rtol: relative tolerance of the ``P^{-1}`` solves (CG, and the implicit steps of the time march).
    """

    CHUNK = 16
    VMAP_ELEMENTS = 2**15
    """Rows are vectorised together up to this many unknowns in all (``vmap_width``)."""
    DRAW_RTOL = 1e-8
    """Loosest tolerance of the time march in prior draws: far below their Monte Carlo error."""

    def __init__(self, curvature: Curvature, rtol: float):
        self.curvature, self.x, self.rtol = curvature, curvature.x, rtol
        self.n_u = curvature.n_field
        self.posterior = curvature.posterior
        self.vmap_width = max(1, min(self.CHUNK, self.VMAP_ELEMENTS // curvature.x.size))
        obj = Objective(self.posterior, *curvature.unravel(curvature.x))
        self.x_unc = obj.x0
        self._march_obj = obj if (curvature.has_initial_condition and applies_time_marching(obj)) else None
        # The march is P^{-1} exactly only where no block was capped (rho (1 - 2u) dt <= REACTION_CAP); elsewhere
        # it preconditions a CG solve with P instead.
        self.march_exact = self._march_obj is not None and int(capped_points(obj, self.x_unc)) == 0
        self._jitted = {name: jax.jit(self._batch_op(name)) for name in ("P", "M", "P_inv", "H")}
        self._jitted["draw"] = jax.jit(self._draw)
        self._prior_rhs = jax.jit(self._prior_rhs_fn)

    def _make(self, x, x_unc):
        ops = self.curvature.at(x)
        _ = ops.vjp_prior, ops.vjp_data  # linearise here, not inside the first loop that uses them
        shape = self.posterior.grid.shape
        march = None
        if self._march_obj is not None:
            forward, backward = time_march(self._march_obj, x_unc, self.rtol)
            march = lambda v: forward(backward(v.reshape(shape))).reshape(-1)  # noqa: E731
        if self.march_exact:
            return ops, march
        P = ops.field_prior

        def p_inv(v):
            sol, info = truncated_cg(P, v, self.rtol * jnp.linalg.norm(v), 10 * self.n_u, march)
            bad = info.negative_curvature | (info.residual_norm > 1e3 * self.rtol * jnp.linalg.norm(v))
            return jnp.where(bad, jnp.nan, sol)
        return ops, p_inv

    def _batch_op(self, name):
        def op(x, x_unc, vs):
            ops, p_inv = self._make(x, x_unc)
            fn = {"P": ops.field_prior, "M": ops.field(ops.data_curvature), "P_inv": p_inv, "H": ops.curvature}[name]
            return jax.lax.map(fn, vs, batch_size=self.vmap_width)
        return op

    def apply(self, name: str, vs):
        """Apply operator ``name`` (``"P"``, ``"M"``, ``"P_inv"``: field block; ``"H"``: full space; ``"draw"``:
        a prior draw per key, exact time march only) to the rows of ``vs``."""
        count = vs.shape[0]
        pad = (-count) % self.CHUNK
        vs = jnp.concatenate([vs, jnp.repeat(vs[:1], pad, axis=0)]) if pad else vs
        out = [self._jitted[name](self.x, self.x_unc, vs[i:i + self.CHUNK]) for i in range(0, vs.shape[0], self.CHUNK)]
        return jnp.concatenate(out)[:count]

    def _draw(self, x, x_unc, keys):
        """``B^{-1} xi``, ``xi ~ N(0, I)``, one row per key: with the time march exact, ``P = B^T B``."""
        forward, _ = time_march(self._march_obj, x_unc, max(self.rtol, self.DRAW_RTOL))
        shape = self.posterior.grid.shape
        return jax.lax.map(lambda k: forward(jax.random.normal(k, shape, x.dtype)).reshape(-1), keys,
                           batch_size=self.vmap_width)

    def _prior_rhs_fn(self, x, keys):
        """``G^T xi`` with ``xi ~ N(0, I)`` over the prior residuals, one row per key."""
        ops = self.curvature.at(x)
        leaves, treedef = jax.tree.flatten(jax.eval_shape(ops.jvp_prior, x))
        vjp = ops.vjp_prior

        def one(k):
            ks = jax.random.split(k, len(leaves))
            xi = jax.tree.unflatten(treedef, [jax.random.normal(kk, s.shape, s.dtype) for kk, s in zip(ks, leaves)])
            return vjp(xi)[0][: self.n_u]
        return jax.lax.map(one, keys, batch_size=self.vmap_width)

    def prior_sample(self, keys):
        """Exact draws from ``N(0, P^{-1})``, one row per key: ``B^{-1} xi`` (one forward march) where the time
        march inverts ``P = B^T B`` exactly, else ``P^{-1} G^T xi`` (``P = G^T G``), ``xi ~ N(0, I)``."""
        if self.march_exact:
            return self.apply("draw", keys)
        return self.apply("P_inv", self._prior_rhs(self.x, keys))
