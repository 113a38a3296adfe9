"""Neural surrogate of the Fisher-Kolmogorov solver: a ConvNeXt U-Net (Weidner et al. 2025, sec. 2.2) in equinox.

The forward network maps the reduced parameters and the tissue to the tumour concentration on a crop,

    f_phi : (theta, c_w, c_g) -> u,     theta = (x, y, z, mu_D, mu_rho)   (``bodil.forward.dataset``)

and the inverse (direct-prediction) network maps ``(u, c_w, c_g)`` back to ``theta`` (Weidner et al. 2025, sec. 2.3).

Architecture. A ConvNeXt block (Liu et al. 2022) is ``x + gamma * W2 gelu(W1 LN(dwconv7(x)))``: a
depthwise 7^3 convolution, a layer norm over channels, a pointwise MLP of width 4C and a learned per-channel
scale ``gamma``. The U-Net has four stages of widths ``(C, 2C, 4C, 8C)`` at resolutions ``n, n/2, n/4,
n/8``; stages are joined by 2^3 stride-2 convolutions down and their transposes up, with skip connections
added. The normalised parameters pass through one linear layer whose output is added channel-wise to the
bottleneck (Weidner et al. (2025)). Its input channels are ``c_w``, ``c_g`` and channels computed from ``theta``
(``theta_channels``): the initial seed (Weidner et al. (2025) feeds it as a side constraint) and the linearised FK solution
in homogeneous white matter, which carries ``mu_D`` and ``mu_rho`` to every voxel. The
output is ``sigmoid``, multiplied by the tissue mask ``c_w + c_g >= 0.1`` (no tumour outside the brain's
tissue, as in the solver). The inverse network is the same encoder followed by global average pooling, a layer norm and a linear layer to the five normalised parameters.

Depthwise 7^3 convolutions are computed by FFT (zero padding, the same result as a grouped ``lax`` convolution
up to rounding): XLA's CPU backend runs grouped 3-D convolutions about a hundred times slower, and the FFT
form is as fast on a GPU. Parameters are normalised to ``[-1, 1]`` by the ranges stored with the weights.

Weights files (``.eqx``): one JSON line (architecture, parameter ranges, how they were trained) followed by
``equinox.tree_serialise_leaves``; ``load`` needs no network. ``pretrained()`` loads the weights shipped in
``bodil/forward/weights/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..io import InputError, atomic_path
from .dataset import FKSettings

TISSUE_THRESHOLD = 0.1
"""The output is zero where ``c_w + c_g`` is below it (the FK solver's no-flux rule)."""

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")


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


SEED_MASS, SEED_DT2 = FKSettings.mass, FKSettings.dt2
"""``M`` and ``Dt^2`` (mm^2) of the data's initial condition (Amoudruz et al. 2025, eq. 27-28, ``FKSettings``)."""

THETA_CHANNELS = ("seed", "homogeneous")
"""The input channels computed from ``theta`` (``theta_channels``)."""


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
      smooth in the origin (Weidner et al. (2025) feeds the seed as a side constraint);
    - ``"homogeneous"``: the FK solution in unbounded homogeneous white matter, linearised and then saturated,
      ``s / (1 + s)`` with

          s = exp(mu_rho^2) M (4 pi (Dt^2 + mu_D^2))^{-3/2} exp(-r^2 / (4 (Dt^2 + mu_D^2))),

      the exact solution of ``u_t = D lap u + rho u`` at ``T = 1`` from the unclipped Gaussian. Its front
      ``s = 1`` moves at the Fisher-KPP speed ``2 sqrt(D rho)`` (radius ``-> 2 mu_D mu_rho``). It carries
      ``mu_D`` and ``mu_rho`` to every voxel at full resolution, so the network learns the anatomy's correction
      to it instead of having to thread the coefficients from the bottleneck through every decoder level
      (with the bottleneck alone, a first CPU training learned to ignore them).
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
    """``jax.random.normal(key, shape)``, drawn flat and reshaped: the same numbers, but XLA compiles the
    flat draw in a fraction of the time (building a network went from 26 s to a few on a laptop CPU)."""
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
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "theta_channels", tuple(self.theta_channels))
        unknown = set(self.theta_channels) - set(THETA_CHANNELS)
        if unknown:
            raise ValueError(f"Architecture: unknown theta channels {sorted(unknown)}; known: {THETA_CHANNELS}.")
        if self.kind not in ("forward", "inverse"):
            raise ValueError(f"Architecture: kind must be 'forward' or 'inverse', got {self.kind!r}.")
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
    """ConvNeXt encoder ``(u (n, n, n), tissue (2, n, n, n)) -> theta_normalised (5,)`` (Weidner et al. (2025) direct
    inverse prediction)."""

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


# ------------------------------------------------------------------------------------ the packaged model
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
        return _to_unit(jnp.asarray(theta), jnp.asarray(self.theta_lower), jnp.asarray(self.theta_upper))

    def denormalise(self, z):
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
        return {"format": "bodil-surrogate/1", "architecture": dataclasses.asdict(self.architecture),
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


def _to_unit(theta, lo, hi):
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
        z = _to_unit(t, lo, hi).astype(jnp.float32)
        return _forward(network, t, z, ti, arch, spacing)

    return one(theta, tissue) if theta.ndim == 1 else jax.vmap(one)(theta, tissue)


@eqx.filter_jit
def _invert(network, u, tissue):
    return network(u, tissue) if u.ndim == 3 else jax.vmap(network)(u, tissue)


def build(architecture: Architecture, key) -> eqx.Module:
    """A freshly initialised network of ``architecture``."""
    cls = ForwardSurrogate if architecture.kind == "forward" else InverseEncoder
    network = cls(architecture, key=key)
    # strong float32 leaves: a weakly typed leaf would turn strong after the first update and recompile
    return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.float32) if eqx.is_inexact_array(x) else x, network)


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
        if header.get("format") != "bodil-surrogate/1":
            raise InputError(f"{path} is not a bodil surrogate weights file (format {header.get('format')!r}).")
        arch = Architecture(**header["architecture"])
        # shapes only: initialising the network for real runs every layer's initialiser eagerly (26 s)
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
    """The weights shipped with bodil (``kind`` "forward" or "inverse"); see ``weights/README.md`` for the
    command, dataset and wall time that made them (32^3 crops at 4 mm, MNI152 anatomy)."""
    if kind not in ("forward", "inverse"):
        raise ValueError(f"pretrained: kind must be 'forward' or 'inverse', got {kind!r}.")
    return load(os.path.join(WEIGHTS_DIR, f"fk_{kind}.eqx"))


# ------------------------------------------------------------------------------------------- training
@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Adam on the mean squared error, cosine-decayed learning rate, fixed seed."""

    kind: str = "forward"
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    width: int = 16
    depths: tuple[int, ...] = (1, 1, 2, 2)
    seed: int = 0
    max_train: int | None = None
    max_val: int | None = None


def _theta_box(train_theta: np.ndarray, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """Normalisation ranges: ``mu_D``, ``mu_rho`` as drawn; offsets symmetric, the largest training offset
    rounded up to whole mm."""
    ranges = manifest["theta_ranges"]
    reach = float(np.ceil(np.abs(train_theta[:, :3]).max()))
    lo = np.array([-reach, -reach, -reach, ranges["mu_d"][0], ranges["mu_rho"][0]])
    hi = np.array([reach, reach, reach, ranges["mu_d"][1], ranges["mu_rho"][1]])
    return lo, hi


def _batches(n: int, batch: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for i in range(0, n - batch + 1, batch):
        yield order[i:i + batch]


def train_surrogate(data, out, settings: TrainSettings = TrainSettings(), *, resume: bool = False,
                    progress: bool = True) -> list[dict]:
    """Train a forward surrogate or an inverse encoder on the dataset in folder ``data``; write ``out``.

    The loss is the mean squared error of ``u`` (forward) or of the normalised ``theta`` (inverse). After every
    epoch the validation metrics are computed and a checkpoint (network, optimiser state, epoch, history) is
    written atomically to ``out + ".checkpoint"``; ``resume=True`` continues from it (same settings and
    dataset). On success ``out`` holds the weights of the last epoch and the checkpoint is removed.

    Returns:
        The history: one dict per epoch with ``train_loss``, ``val_mse`` (and for the forward network the
        other metrics of ``bodil.forward.metrics``), ``wall_s``.
    """
    import optax
    from tqdm.auto import tqdm

    from . import metrics
    from .dataset import load_manifest, load_split

    manifest = load_manifest(data)
    train = load_split(data, "train", limit=settings.max_train)
    val = load_split(data, "val", limit=settings.max_val)
    size = train.u.shape[-1]
    arch = Architecture(kind=settings.kind, width=settings.width, depths=settings.depths, size=size)
    lo, hi = _theta_box(train.theta, manifest)
    spacing = float(manifest["settings"]["spacing_mm"])
    n_batches = len(train) // settings.batch_size
    if n_batches == 0:
        raise InputError(f"train_surrogate: {len(train)} training samples are fewer than one batch of "
                         f"{settings.batch_size}.")
    schedule = optax.cosine_decay_schedule(settings.learning_rate, settings.epochs * n_batches, alpha=0.01)
    optimiser = optax.adam(schedule)
    key = jax.random.PRNGKey(settings.seed)
    network = build(arch, key)
    opt_state = optimiser.init(eqx.filter(network, eqx.is_array))
    history: list[dict] = []
    fingerprint = {"settings": {k: list(v) if isinstance(v, tuple) else v
                                for k, v in dataclasses.asdict(settings).items()},
                   "dataset": {k: manifest[k] for k in ("settings", "tissue_sha256")}}
    ckpt = os.fspath(out) + ".checkpoint"
    if os.path.exists(ckpt):
        if not resume:
            raise InputError(f"{ckpt} exists (an interrupted training); pass --resume to continue it or delete it.")
        with open(ckpt, "rb") as f:
            state = json.loads(f.readline().decode())
            if state["fingerprint"] != json.loads(json.dumps(fingerprint)):
                raise InputError(f"{ckpt} was made with other settings or data; delete it or train with the same.")
            network, opt_state = eqx.tree_deserialise_leaves(f, (network, opt_state))
        history = state["history"]

    def to_model(net, with_info=True):
        info = {}
        if with_info:
            info = {"dataset": {"anatomy": manifest["anatomy"], "size": size, "spacing_mm": spacing,
                                "n_train": len(train), "n_val": len(val), "seed": manifest["settings"]["seed"]},
                    "training": fingerprint["settings"], "history": history,
                    "wall_s": float(sum(h["wall_s"] for h in history))}
        return Surrogate(network=net, architecture=arch, theta_lower=lo, theta_upper=hi, spacing_mm=spacing,
                         info=info)

    def loss_fn(net, theta_z, tissue, u):
        if arch.kind == "forward":
            pred = jax.vmap(to_model(net, False).apply)(theta_z, tissue)
            return jnp.mean((pred - u) ** 2)
        pred = jax.vmap(net)(u, tissue)
        return jnp.mean((pred - theta_z) ** 2)

    @eqx.filter_jit
    def step(net, opt_state, theta_z, tissue, u):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(net, theta_z, tissue, u)
        updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(net, eqx.is_array))
        return eqx.apply_updates(net, updates), opt_state, loss

    @eqx.filter_jit
    def evaluate(net, theta_z, tissue, u):
        if arch.kind == "forward":
            return jax.vmap(to_model(net, False).apply)(theta_z, tissue)
        return jax.vmap(net)(u, tissue)

    def batch_arrays(split, idx):
        return (jnp.asarray(_to_unit(split.theta[idx], lo, hi), jnp.float32), jnp.asarray(split.tissue[idx], jnp.float32),
                jnp.asarray(split.u[idx], jnp.float32))

    for epoch in range(len(history), settings.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([settings.seed, epoch])
        losses = []
        for idx in tqdm(list(_batches(len(train), settings.batch_size, rng)), desc=f"epoch {epoch + 1}/"
                        f"{settings.epochs}", unit="batch", disable=not progress, leave=False):
            network, opt_state, loss = step(network, opt_state, *batch_arrays(train, idx))
            losses.append(float(loss))
        preds = []
        for i in range(0, len(val), settings.batch_size):
            idx = np.arange(i, min(i + settings.batch_size, len(val)))
            preds.append(np.asarray(evaluate(network, *batch_arrays(val, idx))))
        pred = np.concatenate(preds)
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if arch.kind == "forward":
            table = metrics.field_metrics(pred, np.asarray(val.u, np.float64))
            row.update({f"val_{k}": float(np.mean(v)) for k, v in table.items()})
        else:
            row["val_mse"] = float(np.mean((pred - _to_unit(val.theta, lo, hi)) ** 2))
        row["wall_s"] = time.perf_counter() - t0
        history.append(row)
        if progress:
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
        with atomic_path(ckpt, ".checkpoint") as tmp, open(tmp, "wb") as f:
            f.write((json.dumps({"fingerprint": fingerprint, "history": history}) + "\n").encode())
            eqx.tree_serialise_leaves(f, (network, opt_state))
    to_model(network).save(out)
    if os.path.exists(ckpt):
        os.remove(ckpt)
    return history


__all__: Sequence[str] = ["Architecture", "ConvNeXtBlock", "ForwardSurrogate", "InverseEncoder", "Surrogate",
                          "TrainSettings", "build", "depthwise_conv3d", "load", "pretrained", "theta_channels",
                          "train_surrogate"]
