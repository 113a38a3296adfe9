"""The local-operator network ``u(x, t; theta)`` of Zhang et al., "BiLO: Bilevel Local Operator Learning for PDE
inverse problems" (sec. 2.1, appendix B, eq. 17).

The first layer maps the coordinates ``z`` and the (scaled) PDE parameters ``p`` to a hidden vector

    h_1 = sigma(W_z z + W_p p + b),

where ``W_z`` and ``b`` are trained and the embedding ``W_p`` is drawn once, uniform in ``(-1/sqrt(d), 1/sqrt(d))``
with ``d`` the layer's fan-in (coordinates plus parameters), and then **fixed**: a trainable ``W_p`` could be
set to zero, which would make the residual-gradient loss ``||d r / d p||^2`` vanish without the network
learning how the solution moves with ``p``. Fully connected ``tanh`` layers follow, then a scalar output
``u_raw`` and an optional output transform ``u = transform(z, u_raw)`` (or ``transform(z, u_raw, p)``) that
imposes initial and boundary conditions exactly (appendix D.1: ``u = u_0(x) + u_raw x (1 - x) t``).

Optional input features replace ``z`` in the first layer by ``phi(z)`` (``features``; for example ``z`` and the
squared distance from a known seed, for a solution that spreads from it): a smooth ``phi`` keeps the residual's
derivatives, which are taken with respect to ``z`` through it.

With ``uses_params=False`` the same network ignores ``p``: that is the PINN of the comparison (eq. 11),
trained through the same code path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp


def _identity_transform(z, raw):
    return raw


class LocalOperatorNet(eqx.Module):
    """``u(z; p) = transform(z, MLP(tanh(W_z z + W_p p + b)))`` with a fixed random embedding ``W_p``.

    Call it on one point: ``net(z, p)`` with ``z`` of shape ``(n_coords,)`` and ``p`` of shape ``(n_params,)``
    returns a scalar. ``jax.vmap`` it over points.
    """

    first: eqx.nn.Linear
    embedding: jax.Array
    hidden: tuple
    out: eqx.nn.Linear
    transform: Callable = eqx.field(static=True)
    uses_params: bool = eqx.field(static=True)
    transform_params: bool = eqx.field(static=True, default=False)
    features: Callable | None = eqx.field(static=True, default=None)

    @property
    def n_coords(self) -> int:
        """Number of coordinates ``z`` the network is called with."""
        return self.first.weight.shape[1] if self.features is None else self.features.n_coords

    def __call__(self, z, p):
        h = self.first(z if self.features is None else self.features(z))
        if self.uses_params:
            # stop_gradient on the matrix only: d u / d p still flows, d loss / d W_p is zero.
            h = h + jax.lax.stop_gradient(self.embedding) @ p
        h = jnp.tanh(h)
        for layer in self.hidden:
            h = jnp.tanh(layer(h))
        raw = self.out(h)[0]
        return self.transform(z, raw, p) if self.transform_params else self.transform(z, raw)


def local_operator_net(seed, n_coords: int, n_params: int, *, width: int = 128, depth: int = 2,
                       transform: Callable | None = None, uses_params: bool = True, transform_params: bool = False,
                       features: Callable | None = None, dtype=None) -> LocalOperatorNet:
    """A ``LocalOperatorNet`` with ``depth`` hidden layers of ``width`` units (Zhang et al., appendix D: 2 x 128).

    Args:
        seed: an integer or a ``jax.random`` key (``bodil._checks.as_key``).
        n_coords: number of coordinates (``2`` for ``(t, x)``).
        n_params: number of scalar PDE parameters fed through the fixed embedding.
        width: hidden width.
        depth: number of hidden layers (``>= 1``; the first is the embedding layer).
        transform: ``(z, u_raw) -> u``, imposing initial/boundary conditions; identity by default.
        uses_params: ``False`` for the PINN baseline (the network does not see ``p``).
        transform_params: call ``transform(z, u_raw, p)`` instead (an output transform that uses the
            parameters, e.g. ``u = u_raw x (1 - x) t + a`` with the auxiliary variable ``a``; ``bodil.bilo.functions``).
        features: a smooth map ``phi(z)`` of the coordinates fed to the first layer instead of ``z``; wrapped in
            ``InputFeatures`` (hashable, it is a static field), which records ``n_coords``.
        dtype: floating dtype of the weights (default: JAX's default float).

    Returns:
        The network; its embedding is excluded from training by ``trainable_filter``.
    """
    from .._checks import as_key, integer

    n_coords = integer("local_operator_net", "n_coords", n_coords, 1)
    n_params = integer("local_operator_net", "n_params", n_params, 0)
    width = integer("local_operator_net", "width", width, 1)
    depth = integer("local_operator_net", "depth", depth, 1)
    if transform_params and transform is None:
        raise ValueError("local_operator_net: transform_params=True needs a transform(z, u_raw, p).")
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    n_in = n_coords
    if features is not None:
        features = features if isinstance(features, InputFeatures) else InputFeatures(features, n_coords)
        if features.n_coords != n_coords:
            raise ValueError(f"local_operator_net: the features take {features.n_coords} coordinate(s), the network "
                             f"{n_coords}.")
        n_in = features.n_features(dtype)
    k_first, k_emb, k_hidden, k_out = jax.random.split(as_key("local_operator_net", seed), 4)
    first = eqx.nn.Linear(n_in, width, key=k_first, dtype=dtype)
    bound = 1.0 / math.sqrt(n_in + n_params)
    first = eqx.tree_at(lambda m: (m.weight, m.bias), first,
                        (jax.random.uniform(k_first, (width, n_in), dtype, -bound, bound),
                         jax.random.uniform(jax.random.fold_in(k_first, 1), (width,), dtype, -bound, bound)))
    embedding = jax.random.uniform(k_emb, (width, n_params), dtype, -bound, bound)
    hidden = tuple(eqx.nn.Linear(width, width, key=k, dtype=dtype) for k in jax.random.split(k_hidden, depth - 1))
    out = eqx.nn.Linear(width, 1, key=k_out, dtype=dtype)
    return LocalOperatorNet(first, embedding, hidden, out, transform or _identity_transform, bool(uses_params),
                            bool(transform_params), features)


class InputFeatures:
    """A feature map ``phi(z)`` of ``n_coords`` coordinates for ``local_operator_net(features=...)``; compared by
    identity (a static field of the network)."""

    def __init__(self, phi: Callable, n_coords: int):
        self.phi, self.n_coords = phi, int(n_coords)

    def __call__(self, z):
        return self.phi(z)

    def n_features(self, dtype) -> int:
        """Length of ``phi(z)`` (checked to be a vector)."""
        out = jax.eval_shape(self.phi, jax.ShapeDtypeStruct((self.n_coords,), dtype))
        if len(out.shape) != 1:
            raise ValueError(f"InputFeatures: phi(z) must be a vector, got shape {out.shape}.")
        return int(out.shape[0])


def trainable_filter(net: LocalOperatorNet):
    """Filter spec (a pytree of booleans) of the trained leaves: every floating array except the embedding."""
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, net)
    return eqx.tree_at(lambda n: n.embedding, spec, False)


def split(net: LocalOperatorNet):
    """``(params, rest)``: the trained leaves and everything else (embedding, structure); ``eqx.combine`` joins them."""
    return eqx.partition(net, trainable_filter(net))
