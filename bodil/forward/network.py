"""The networks of the neural surrogate of the Fisher-Kolmogorov solver, in equinox (Weidner et al. 2025, sec. 2.2-2.3).

The forward network maps the reduced parameters and the tissue to the tumour concentration on a crop,

    f_phi : (theta, c_w, c_g) -> u,     theta = (x, y, z, mu_D, mu_rho)   (``bodil.forward.dataset``)

and the inverse (direct-prediction) network maps ``(u, c_w, c_g)`` back to ``theta`` (Weidner et al. 2025,
sec. 2.3).

A ConvNeXt block (Liu et al. 2022) is ``x + gamma * W2 gelu(W1 LN(dwconv7(x)))``: a depthwise 7^3
convolution, a layer norm over channels, a pointwise MLP of width 4C and a learned per-channel scale
``gamma``. The U-Net has four stages of widths ``(C, 2C, 4C, 8C)`` at resolutions ``n, n/2, n/4, n/8``;
stages are joined by 2^3 stride-2 convolutions down and their transposes up, with skip connections added.
The normalised parameters pass through one linear layer whose output is added channel-wise to the
bottleneck (Weidner et al. 2025). The input channels are ``c_w``, ``c_g`` and channels computed from
``theta`` (``theta_channels``): the initial seed and the linearised FK solution in homogeneous white matter,
which carries ``mu_D`` and ``mu_rho`` to every voxel. The output is ``sigmoid``, multiplied by the tissue
mask ``c_w + c_g >= TISSUE_THRESHOLD`` (no tumour outside the brain's tissue, as in the solver). The inverse
network is the same encoder followed by global average pooling, a layer norm and a linear layer to the five
normalised parameters.

Depthwise 7^3 convolutions are computed by FFT with zero padding (the same result as a grouped ``lax``
convolution up to rounding; docs/surrogate.md compares their speed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from ..residuals.initial import SEED_DT2, SEED_MASS
from ..stencil import TISSUE_THRESHOLD

# --------------------------------------------------------------------------------------------- layers
def _fft_size(n: int) -> int:
    """Smallest size >= n whose only prime factors are 2, 3 and 5 (fast FFTs)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def depthwise_conv3d(x, kernel):
    """Per-channel 'same' cross-correlation with zero padding, by FFT.

    ``y_c(i) = sum_j kernel_c(j) x_c(i + j - k // 2)`` for ``x`` of shape ``(C, n1, n2, n3)`` and ``kernel``
    ``(C, k, k, k)`` (odd ``k``), equal to ``lax.conv_general_dilated(..., padding="SAME",
    feature_group_count=C)``.
    """
    k = kernel.shape[-1]
    p = k // 2
    sizes = tuple(_fft_size(n + k - 1) for n in x.shape[1:])
    axes = (1, 2, 3)
    fx = jnp.fft.rfftn(x, s=sizes, axes=axes)
    fk = jnp.fft.rfftn(kernel[:, ::-1, ::-1, ::-1], s=sizes, axes=axes)
    y = jnp.fft.irfftn(fx * fk, s=sizes, axes=axes)
    return y[:, p:p + x.shape[1], p:p + x.shape[2], p:p + x.shape[3]].astype(x.dtype)


THETA_CHANNELS = ("seed", "homogeneous")
"""The input channels computed from ``theta`` (``theta_channels``)."""

KINDS = ("forward", "inverse")
"""The two networks: the forward surrogate and the inverse encoder."""


def linearised_log_concentration(r2, mu_d, mu_rho):
    """``log s`` of the linearised FK solution from the unclipped seed in unbounded homogeneous tissue at
    ``T = 1`` (``D = mu_D^2``, ``rho = mu_rho^2``), at squared distance ``r2`` (mm^2) from the origin:

        log s = mu_rho^2 + log M - 3/2 log(4 pi (Dt^2 + mu_D^2)) - r^2 / (4 (Dt^2 + mu_D^2)).
    """
    s2 = SEED_DT2 + mu_d ** 2
    return mu_rho ** 2 + math.log(SEED_MASS) - 1.5 * jnp.log(4.0 * math.pi * s2) - r2 / (4.0 * s2)


def theta_channels(theta, size: int, spacing_mm: float, names: Sequence[str] = THETA_CHANNELS):
    """Input channels computed from physical ``theta = (x, y, z, mu_D, mu_rho)`` on the crop's cell centres
    (``x_0`` = crop centre + ``theta[:3]`` mm), shape ``(len(names), n, n, n)``:

    - ``"seed"``: the initial tumour ``exp(-r^2 / (4 Dt^2))``, ``r = |x - x_0|``, unclipped so that it is
      smooth in the origin (Weidner et al. 2025 give the seed to the network as a side constraint);
    - ``"homogeneous"``: the FK solution in unbounded homogeneous white matter, linearised and then saturated,
      ``s / (1 + s)`` with

          s = exp(mu_rho^2) M (4 pi (Dt^2 + mu_D^2))^{-3/2} exp(-r^2 / (4 (Dt^2 + mu_D^2))),

      the exact solution of ``u_t = D lap u + rho u`` at ``T = 1`` from the unclipped Gaussian. Its front
      ``s = 1`` moves at the Fisher-KPP speed ``2 sqrt(D rho)`` (radius ``-> 2 mu_D mu_rho``). It carries
      ``mu_D`` and ``mu_rho`` to every voxel at full resolution, so the network learns the anatomy's correction
      to it instead of having to thread the coefficients from the bottleneck through every decoder level
      (docs/surrogate.md says why this channel is there).
    """
    x = (jnp.arange(size) + 0.5) * spacing_mm - 0.5 * size * spacing_mm
    d = [(x - theta[k]) ** 2 for k in range(3)]
    r2 = d[0][:, None, None] + d[1][None, :, None] + d[2][None, None, :]
    channels = []
    for name in names:
        if name == "seed":
            channels.append(jnp.exp(-r2 / (4.0 * SEED_DT2)))
        elif name == "homogeneous":
            channels.append(jax.nn.sigmoid(linearised_log_concentration(r2, theta[3], theta[4])))
        else:
            raise ValueError(f"theta_channels: unknown channel {name!r}; known: {THETA_CHANNELS}.")
    return jnp.stack(channels)


def _normal(key, shape) -> jax.Array:
    """``jax.random.normal(key, shape)``, drawn flat and reshaped: the same numbers, and XLA compiles the
    flat draw much faster than the shaped one."""
    return jax.random.normal(key, (math.prod(shape),)).reshape(shape)


class Pointwise(eqx.Module):
    """A 1^3 convolution: ``y_o = sum_c W_oc x_c + b_o``."""

    weight: jax.Array
    bias: jax.Array

    def __init__(self, cin: int, cout: int, *, key, scale: float = 1.0):
        self.weight = scale * _normal(key, (cout, cin)) / math.sqrt(cin)
        self.bias = jnp.zeros((cout,))

    def __call__(self, x):
        return jnp.einsum("oc,c...->o...", self.weight, x) + self.bias.reshape((-1,) + (1,) * (x.ndim - 1))


class ChannelNorm(eqx.Module):
    """Layer norm over the channel axis at every voxel (ConvNeXt's ``channels_first`` LayerNorm)."""

    weight: jax.Array
    bias: jax.Array
    eps: float = eqx.field(static=True, default=1e-6)

    def __init__(self, channels: int, eps: float = 1e-6):
        self.weight = jnp.ones((channels,))
        self.bias = jnp.zeros((channels,))
        self.eps = eps

    def __call__(self, x):
        mean = x.mean(axis=0, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=0, keepdims=True)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight.reshape(shape) + self.bias.reshape(shape)


class ConvNeXtBlock(eqx.Module):
    """``x + gamma * W2 gelu(W1 LN(dwconv_k(x)))`` (Liu et al. 2022)."""

    kernel: jax.Array
    kernel_bias: jax.Array
    norm: ChannelNorm
    expand: Pointwise
    project: Pointwise
    gamma: jax.Array

    def __init__(self, channels: int, *, key, kernel_size: int = 7, layer_scale: float = 0.1):
        k1, k2, k3 = jax.random.split(key, 3)
        self.kernel = _normal(k1, (channels,) + (kernel_size,) * 3) / math.sqrt(kernel_size ** 3)
        self.kernel_bias = jnp.zeros((channels,))
        self.norm = ChannelNorm(channels)
        self.expand = Pointwise(channels, 4 * channels, key=k2)
        self.project = Pointwise(4 * channels, channels, key=k3)
        self.gamma = layer_scale * jnp.ones((channels,), jnp.float32)

    def __call__(self, x):
        y = depthwise_conv3d(x, self.kernel) + self.kernel_bias[:, None, None, None]
        y = self.project(jax.nn.gelu(self.expand(self.norm(y))))
        return x + self.gamma[:, None, None, None] * y


class Down(eqx.Module):
    """Layer norm, then a 2^3 convolution with stride 2 (halves every axis)."""

    norm: ChannelNorm
    weight: jax.Array
    bias: jax.Array

    def __init__(self, cin: int, cout: int, *, key):
        self.norm = ChannelNorm(cin)
        self.weight = _normal(key, (cout, cin, 2, 2, 2)) / math.sqrt(8 * cin)
        self.bias = jnp.zeros((cout,))

    def __call__(self, x):
        c, a, b, d = x.shape
        x = self.norm(x).reshape(c, a // 2, 2, b // 2, 2, d // 2, 2)
        return jnp.einsum("ocpqr,cipjqkr->oijk", self.weight, x) + self.bias[:, None, None, None]


class Up(eqx.Module):
    """A transposed 2^3 convolution with stride 2 (doubles every axis), then a layer norm."""

    weight: jax.Array
    bias: jax.Array
    norm: ChannelNorm

    def __init__(self, cin: int, cout: int, *, key):
        self.weight = _normal(key, (cout, cin, 2, 2, 2)) / math.sqrt(cin)
        self.bias = jnp.zeros((cout,))
        self.norm = ChannelNorm(cout)

    def __call__(self, x):
        _, a, b, d = x.shape
        y = jnp.einsum("ocpqr,cijk->oipjqkr", self.weight, x).reshape(self.weight.shape[0], 2 * a, 2 * b, 2 * d)
        return self.norm(y + self.bias[:, None, None, None])


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What a network is: ``kind`` ("forward" or "inverse"), first-stage ``width`` C, blocks per stage
    ``depths`` (encoder; the decoder has one block per stage), crop ``size`` and, for the forward network, the
    input channels computed from theta (``theta_channels``)."""

    kind: str = "forward"
    width: int = 16
    depths: tuple[int, ...] = (1, 1, 2, 2)
    kernel_size: int = 7
    n_theta: int = 5
    size: int = 32
    theta_channels: tuple[str, ...] = THETA_CHANNELS

    def __post_init__(self):
        where = "Architecture"
        _checks.choice(where, "kind", self.kind, KINDS)
        for name in ("width", "kernel_size", "n_theta", "size"):
            object.__setattr__(self, name, _checks.integer(where, name, getattr(self, name), low=1))
        object.__setattr__(self, "depths", tuple(_checks.integer(where, "depths", d, low=1) for d in self.depths))
        object.__setattr__(self, "theta_channels", tuple(self.theta_channels))
        unknown = set(self.theta_channels) - set(THETA_CHANNELS)
        if unknown:
            raise ValueError(f"Architecture: unknown theta channels {sorted(unknown)}; known: {THETA_CHANNELS}.")
        factor = 2 ** (len(self.depths) - 1)
        if self.size % factor:
            raise ValueError(f"Architecture: the crop size {self.size} must be divisible by {factor} "
                             f"({len(self.depths)} stages).")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.width * 2 ** i for i in range(len(self.depths)))


class _Encoder(eqx.Module):
    stem: Pointwise
    stages: list
    downs: list

    def __init__(self, cin: int, arch: Architecture, key):
        keys = iter(jax.random.split(key, 64))
        w = arch.widths
        self.stem = Pointwise(cin, w[0], key=next(keys))
        self.stages = [[ConvNeXtBlock(c, key=next(keys), kernel_size=arch.kernel_size) for _ in range(d)]
                       for c, d in zip(w, arch.depths)]
        self.downs = [Down(w[i], w[i + 1], key=next(keys)) for i in range(len(w) - 1)]

    def __call__(self, x, bottleneck_add=None):
        x = self.stem(x)
        skips = []
        for i, blocks in enumerate(self.stages):
            if i > 0:
                x = self.downs[i - 1](x)
            if i == len(self.stages) - 1 and bottleneck_add is not None:
                x = x + bottleneck_add[:, None, None, None]
            for block in blocks:
                x = block(x)
            skips.append(x)
        return skips


class ForwardSurrogate(eqx.Module):
    """ConvNeXt U-Net ``(theta_normalised (5,), tissue (2, n, n, n), channels (k, n, n, n)) -> u (n, n, n)``
    (module docstring; ``channels`` are ``theta_channels`` of the physical theta)."""

    encoder: _Encoder
    coefficients: eqx.nn.Linear
    ups: list
    decoder: list
    head: Pointwise

    def __init__(self, arch: Architecture, *, key):
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        w = arch.widths
        self.encoder = _Encoder(2 + len(arch.theta_channels), arch, k1)
        self.coefficients = eqx.nn.Linear(arch.n_theta, w[-1], key=k2)
        ups, dec = jax.random.split(k3, len(w)), jax.random.split(k4, len(w))
        self.ups = [Up(w[i + 1], w[i], key=ups[i]) for i in range(len(w) - 1)]
        self.decoder = [ConvNeXtBlock(w[i], key=dec[i], kernel_size=arch.kernel_size) for i in range(len(w) - 1)]
        self.head = Pointwise(w[0], 1, key=k5, scale=0.1)

    def __call__(self, theta, tissue, channels):
        skips = self.encoder(jnp.concatenate([tissue, channels]), self.coefficients(theta))
        x = skips[-1]
        for i in reversed(range(len(self.ups))):
            x = self.decoder[i](self.ups[i](x) + skips[i])
        mask = (tissue[0] + tissue[1]) >= TISSUE_THRESHOLD
        return jnp.where(mask, jax.nn.sigmoid(self.head(x)[0]), 0.0)


class InverseEncoder(eqx.Module):
    """ConvNeXt encoder ``(u (n, n, n), tissue (2, n, n, n)) -> theta_normalised (5,)`` (the direct inverse
    prediction of Weidner et al. 2025, sec. 2.3)."""

    encoder: _Encoder
    norm: eqx.nn.LayerNorm
    out: eqx.nn.Linear

    def __init__(self, arch: Architecture, *, key):
        k1, k2 = jax.random.split(key)
        self.encoder = _Encoder(3, arch, k1)
        self.norm = eqx.nn.LayerNorm(arch.widths[-1])
        self.out = eqx.nn.Linear(arch.widths[-1], arch.n_theta, key=k2)

    def __call__(self, u, tissue):
        x = self.encoder(jnp.concatenate([u[None], tissue]))[-1]
        return self.out(self.norm(x.mean(axis=(1, 2, 3))))


def build(architecture: Architecture, key) -> eqx.Module:
    """A freshly initialised network of ``architecture`` from the ``jax.random`` key ``key``."""
    cls = ForwardSurrogate if architecture.kind == "forward" else InverseEncoder
    network = cls(architecture, key=key)
    # strong float32 leaves: a weakly typed leaf would turn strong after the first update and recompile
    return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32) if eqx.is_inexact_array(x) else x, network)


__all__: Sequence[str] = ["Architecture", "ChannelNorm", "ConvNeXtBlock", "Down", "ForwardSurrogate", "InverseEncoder",
                          "KINDS", "Pointwise", "SEED_DT2", "SEED_MASS", "THETA_CHANNELS", "TISSUE_THRESHOLD", "Up", "build",
                          "depthwise_conv3d", "linearised_log_concentration", "theta_channels"]
