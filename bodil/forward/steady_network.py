"""The networks of the steady diffusion surrogate, in equinox (Toledo-Marín et al. 2021, "Deep learning
approaches to surrogates for solving the diffusion equation for mechanistic real-world simulations", sec. 2,
Fig. 2-3, Table 1).

The source image ``x`` (``n x n``, ``bodil.forward.steady.source_image``) goes to two networks whose outputs
are summed, ``y_hat = p1 NN1(x) + p2 NN2(x)`` (the paper uses ``p_i`` in {0, 1}; a network with ``p_i = 0``
is left out):

* NN1: six 3x3 'same' convolutions with 1-4-8-16-8-4-1 channels, leaky ReLU (ReLU on the last), dropout
  ``D1`` after the first and ``D2`` after the last, a batch norm after every convolution (Table 1, left).
* NN2, the autoencoder: a 3x3 convolution to ``C`` channels, batch norm, dropout ``D3``; then mean-pool
  (2x2, floor) and 3x3 convolution with doubled channels until the image is at most 3 pixels wide
  (100, 50, 25, 12, 6, 3 with ``C, 2C, ... 16C`` for ``n = 100``); a 'valid' convolution to ``32 C`` channels
  at 1x1; transposed convolutions back up: to the last pooled size, then stride 2 (3x3, padding 0 or 1,
  the smallest odd size not below each encoder size: 7, 13, 25, 51), dropout ``D4``, and a 4x4 stride-2
  transposed convolution to ``n`` with ReLU, then a batch norm (Table 1, right). ``C = 64`` in the paper
  (2048 channels at the bottleneck); ``width_scale`` multiplies NN2's channels for CPU-sized training.

Batch norms keep running statistics in an ``equinox.nn.State`` (mode "batch": batch statistics in training,
running ones in inference); the networks work on one image inside ``jax.vmap(..., axis_name="batch")``.

Weights files: one JSON line (format ``bodil-steady-surrogate/1``: architecture, training record) followed by
``equinox.tree_serialise_leaves`` of the network and its batch-norm state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..io import InputError, atomic_path

WEIGHTS_FILE = os.path.join(os.path.dirname(__file__), "weights", "steady_nn2.eqx")
"""The shipped weights (``weights/README.md`` says how they were made)."""

FORMAT = "bodil-steady-surrogate/1"
"""The ``format`` entry of a steady surrogate weights file's header."""

NN1_CHANNELS = (1, 4, 8, 16, 8, 4, 1)
"""NN1's channels, input to output (Table 1)."""

BATCH_AXIS = "batch"
"""The ``vmap`` axis name the batch norms reduce over."""


@dataclasses.dataclass(frozen=True)
class SteadyArchitecture:
    """What a steady surrogate network is: lattice ``size``, ``p1``/``p2`` (weights of NN1 and NN2, 0 turns a
    network off), dropout rates ``dropout = (D1, D2, D3, D4)``, NN2's first-level channels ``64 *
    width_scale`` (rounded, at least 1), the leaky ReLU slope ``leak``, the batch norm ``momentum`` and
    ``output_norm`` (the batch norm after each network's last layer, Table 1; ``False`` leaves it out).
    Defaults: the paper's model 9 (``p1 = p2 = 1``, dropout 0.4, 0.4, 0.1, 0.1)."""

    size: int = 100
    p1: float = 1.0
    p2: float = 1.0
    dropout: tuple[float, ...] = (0.4, 0.4, 0.1, 0.1)
    width_scale: float = 1.0
    leak: float = 0.01
    momentum: float = 0.9
    output_norm: bool = True

    def __post_init__(self):
        where = "SteadyArchitecture"
        object.__setattr__(self, "size", _checks.integer(where, "size", self.size, low=8))
        for name in ("p1", "p2", "width_scale", "leak"):
            object.__setattr__(self, name, _checks.positive(where, name, getattr(self, name),
                                                            allow_zero=name != "width_scale"))
        if self.p1 == 0 and self.p2 == 0:
            raise ValueError(f"{where}: p1 and p2 are both 0; turn on at least one network.")
        drop = tuple(float(d) for d in self.dropout)
        if len(drop) != 4 or not all(0 <= d < 1 for d in drop):
            raise ValueError(f"{where}: dropout must be four rates (D1, D2, D3, D4) in [0, 1), got {self.dropout!r}.")
        object.__setattr__(self, "dropout", drop)
        _checks.open_interval(where, "momentum", self.momentum, 0.0, 1.0)

    @property
    def base_channels(self) -> int:
        return max(1, int(round(64 * self.width_scale)))

    def pooled_sizes(self) -> list[int]:
        """Image sides along NN2's encoder: ``n`` halved (floor) until at most 3."""
        sizes = [self.size]
        while sizes[-1] > 3:
            sizes.append(sizes[-1] // 2)
        return sizes

    def nn2_channels(self) -> list[int]:
        """NN2's encoder channels per level, then the bottleneck's (``C, 2C, ..., 2^L C``)."""
        return [self.base_channels * 2 ** k for k in range(len(self.pooled_sizes()))]


def _leaky(x, leak):
    return jnp.where(x >= 0, x, leak * x)


def _batch_norm(channels: int, arch: SteadyArchitecture) -> eqx.nn.BatchNorm:
    return eqx.nn.BatchNorm(channels, BATCH_AXIS, momentum=arch.momentum, mode="batch")


def _normed(norm, x, state):
    """``norm(x, state)`` in ``x``'s dtype (running statistics may come back in float64 under x64)."""
    y, state = norm(x, state)
    return y.astype(x.dtype), state


class NN1(eqx.Module):
    """Six 3x3 'same' convolutions, 1-4-8-16-8-4-1 channels (module docstring)."""

    convs: list
    norms: list
    drop1: eqx.nn.Dropout
    drop2: eqx.nn.Dropout
    leak: float = eqx.field(static=True)

    def __init__(self, arch: SteadyArchitecture, *, key):
        keys = jax.random.split(key, len(NN1_CHANNELS) - 1)
        self.convs = [eqx.nn.Conv2d(a, b, 3, padding=1, key=k)
                      for a, b, k in zip(NN1_CHANNELS[:-1], NN1_CHANNELS[1:], keys)]
        self.norms = [_batch_norm(c, arch) for c in NN1_CHANNELS[1:-1]]
        if arch.output_norm:
            self.norms.append(_batch_norm(1, arch))
        self.drop1, self.drop2 = eqx.nn.Dropout(arch.dropout[0]), eqx.nn.Dropout(arch.dropout[1])
        self.leak = arch.leak

    def __call__(self, x, state, *, key=None):
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = jax.nn.relu(x) if i == last else _leaky(x, self.leak)
            if i == 0:
                x = self.drop1(x, key=k1)
            if i == last:
                x = self.drop2(x, key=k2)
            if i < len(self.norms):
                x, state = _normed(self.norms[i], x, state)
        return x, state


class NN2(eqx.Module):
    """The mean-pool autoencoder (module docstring)."""

    encoder: list
    bottom: eqx.nn.Conv2d
    decoder: list
    head: eqx.nn.ConvTranspose2d
    norm_in: eqx.nn.BatchNorm
    norm_out: eqx.nn.BatchNorm | None
    drop3: eqx.nn.Dropout
    drop4: eqx.nn.Dropout
    leak: float = eqx.field(static=True)

    def __init__(self, arch: SteadyArchitecture, *, key):
        sizes, ch = arch.pooled_sizes(), arch.nn2_channels()
        levels = len(sizes) - 1  # convolutions before the poolings
        keys = iter(jax.random.split(key, 2 * levels + 3))
        self.encoder = [eqx.nn.Conv2d(1 if k == 0 else ch[k - 1], ch[k], 3, padding=1, key=next(keys))
                        for k in range(levels)]
        self.bottom = eqx.nn.Conv2d(ch[levels - 1], ch[levels], sizes[-1], key=next(keys))
        decoder = [eqx.nn.ConvTranspose2d(ch[levels], ch[levels - 1], sizes[-1], key=next(keys))]
        side = sizes[-1]
        for k in range(levels - 1, 0, -1):  # stride 2 towards sizes[k]: 2 side - 1 (padding 1) or 2 side + 1
            pad = 1 if 2 * side - 1 >= sizes[k] else 0
            decoder.append(eqx.nn.ConvTranspose2d(ch[k], ch[k - 1], 3, stride=2, padding=pad, key=next(keys)))
            side = 2 * side + 1 - 2 * pad
        self.decoder = decoder
        extra = (2 * side + 2 - arch.size) % 2  # output_padding for an odd lattice side
        pad = (2 * side + 2 + extra - arch.size) // 2
        if not 0 <= pad <= 3:
            raise ValueError(f"SteadyArchitecture: no 4x4 stride-2 transposed convolution takes {side} to "
                             f"{arch.size} pixels.")
        self.head = eqx.nn.ConvTranspose2d(ch[0], 1, 4, stride=2, padding=pad, output_padding=extra, key=next(keys))
        self.norm_in = _batch_norm(ch[0], arch)
        self.norm_out = _batch_norm(1, arch) if arch.output_norm else None
        self.drop3, self.drop4 = eqx.nn.Dropout(arch.dropout[2]), eqx.nn.Dropout(arch.dropout[3])
        self.leak = arch.leak

    def __call__(self, x, state, *, key=None):
        k3, k4 = (None, None) if key is None else jax.random.split(key)
        for k, conv in enumerate(self.encoder):
            if k > 0:
                x = _mean_pool(x)
            x = _leaky(conv(x), self.leak)
            if k == 0:
                x, state = _normed(self.norm_in, x, state)
                x = self.drop3(x, key=k3)
        x = _leaky(self.bottom(_mean_pool(x)), self.leak)
        for conv in self.decoder:
            x = _leaky(conv(x), self.leak)
        x = self.drop4(x, key=k4)
        x = jax.nn.relu(self.head(x))
        return (x, state) if self.norm_out is None else _normed(self.norm_out, x, state)


def _mean_pool(x):
    """2x2 mean pooling with stride 2 (a trailing odd row or column is dropped)."""
    c, a, b = x.shape
    a2, b2 = a // 2, b // 2
    return x[:, :2 * a2, :2 * b2].reshape(c, a2, 2, b2, 2).mean(axis=(2, 4))


class SteadyNetwork(eqx.Module):
    """``y_hat = p1 NN1(x) + p2 NN2(x)`` for one ``(n, n)`` image; ``(y_hat, state)``."""

    nn1: NN1 | None
    nn2: NN2 | None
    p1: float = eqx.field(static=True)
    p2: float = eqx.field(static=True)

    def __init__(self, arch: SteadyArchitecture, *, key):
        k1, k2 = jax.random.split(key)
        self.nn1 = NN1(arch, key=k1) if arch.p1 else None
        self.nn2 = NN2(arch, key=k2) if arch.p2 else None
        self.p1, self.p2 = arch.p1, arch.p2

    def __call__(self, x, state, *, key=None):
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        out = jnp.zeros(x.shape, x.dtype)
        x = x[None]
        if self.nn1 is not None:
            y, state = self.nn1(x, state, key=k1)
            out = out + self.p1 * y[0]
        if self.nn2 is not None:
            y, state = self.nn2(x, state, key=k2)
            out = out + self.p2 * y[0]
        return out, state


def _dtype(x):
    """float32 or int32: the leaves' dtypes with and without ``jax_enable_x64`` alike."""
    return jnp.float32 if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.int32


@functools.lru_cache(maxsize=16)
def _skeleton(arch: SteadyArchitecture) -> SteadyNetwork:
    """Shapes of the network of ``arch``; one per architecture, so that networks built from it share their
    batch-norm state markers and compiled functions are reused."""
    return eqx.filter_eval_shape(lambda k: SteadyNetwork(arch, key=k), jax.random.PRNGKey(0))


def steady_shapes(arch: SteadyArchitecture) -> tuple[SteadyNetwork, eqx.nn.State]:
    """``build_steady``'s output as ``jax.ShapeDtypeStruct`` leaves, without drawing any numbers."""
    def make():
        def zeros(x):  # float32 like build_steady's leaves
            if not isinstance(x, jax.ShapeDtypeStruct):
                return x
            return jnp.zeros(x.shape, _dtype(x))

        net = jax.tree.map(zeros, _skeleton(arch))
        return eqx.nn.delete_init_state(net), eqx.nn.State(net)

    return eqx.filter_eval_shape(make)


def build_steady(arch: SteadyArchitecture, seed) -> tuple[SteadyNetwork, eqx.nn.State]:
    """A freshly initialised network of ``arch`` and its batch-norm state, float32, from ``seed`` (an integer
    or a ``jax.random`` key): convolution weights and biases ``U(-b, b)``, ``b = 1 / sqrt(fan_in)``
    (``fan_in`` = input channels x kernel pixels, equinox's and PyTorch's default), batch norms at scale 1
    and shift 0, running means 0 and variances 1. The numbers come from ``numpy`` (eager JAX initialisers
    would compile one program per weight shape)."""
    rng = np.random.default_rng(_checks.seed_words("build_steady", seed))
    skeleton = _skeleton(arch)
    paths = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(skeleton)]
    fan_in = {name[:-len(".weight")]: math.prod(x.shape[1:]) for name, x in paths
              if name.endswith(".weight") and "norm" not in name}

    def fill(path, x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        name = jax.tree_util.keystr(path)
        if ".init" in name or "norm" in name:  # batch norms: state (count, mean 0, variance 1), scale 1, shift 0
            one = name.endswith(".init[1]") or name.endswith(".weight")
            return jnp.asarray(np.full(x.shape, 1 if one else 0), dtype=_dtype(x))
        bound = 1.0 / math.sqrt(fan_in[name.rsplit(".", 1)[0]])
        return jnp.asarray(rng.uniform(-bound, bound, x.shape), dtype=jnp.float32)

    net = jax.tree_util.tree_map_with_path(fill, skeleton)
    return eqx.nn.delete_init_state(net), eqx.nn.State(net)


def apply_batch(net, state, x, key=None):
    """``(y_hat (B, n, n), state)`` for images ``x (B, n, n)``: training mode (batch statistics, dropout,
    running statistics updated) when ``key`` is given, inference mode (running statistics, no dropout)
    when it is ``None``."""
    if key is None:
        net = eqx.nn.inference_mode(net)
        return jax.vmap(lambda xi: net(xi, state)[0])(x), state
    keys = jax.random.split(key, x.shape[0])
    net = eqx.nn.inference_mode(net, False)
    dtypes = [a.dtype for a in jax.tree.leaves(state)]  # read now: using the state marks it as old
    y, new = jax.vmap(lambda xi, ki: net(xi, state, key=ki), axis_name=BATCH_AXIS, out_axes=(0, None))(x, keys)
    leaves, tree = jax.tree.flatten(new)
    return y, jax.tree.unflatten(tree, [a.astype(d) for a, d in zip(leaves, dtypes)])  # fixed dtypes: no recompiling


@eqx.filter_jit
def infer(net, state, x):
    """``apply_batch(net, state, x)[0]`` in inference mode, compiled once per shape."""
    return apply_batch(net, state, x)[0]


@dataclasses.dataclass(frozen=True, eq=False)
class SteadySurrogate:
    """A trained steady surrogate: ``network``, its batch-norm ``state``, ``architecture`` and ``info`` (how it
    was trained, its test metrics)."""

    network: SteadyNetwork
    state: eqx.nn.State
    architecture: SteadyArchitecture
    info: dict

    def predict(self, x):
        """Steady fields for source images ``x`` (``(n, n)`` or ``(B, n, n)``; ``source_image``), in inference
        mode; differentiable in ``x``."""
        n = self.architecture.size
        x = jnp.asarray(x, jnp.float32)
        if x.shape[-2:] != (n, n) or x.ndim not in (2, 3):
            raise InputError(f"SteadySurrogate: these weights are for a {n} x {n} lattice; got source images of "
                             f"shape {tuple(x.shape)} (give (n, n) or (B, n, n) with n = {n}).")
        y = infer(self.network, self.state, x.reshape((-1, n, n)))
        return y[0] if x.ndim == 2 else y

    def save(self, path) -> str:
        """Write the weights file atomically (a JSON line, then the leaves of network and state)."""
        path = os.fspath(path)
        header = {"format": FORMAT, "architecture": dataclasses.asdict(self.architecture), "info": self.info}
        with atomic_path(path, ".eqx") as tmp, open(tmp, "wb") as f:
            f.write((json.dumps(header) + "\n").encode())
            eqx.tree_serialise_leaves(f, (self.network, self.state))
        return path


def load_steady(path) -> SteadySurrogate:
    """Read a weights file of ``SteadySurrogate.save``; ``InputError`` for a missing, foreign or damaged file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"steady surrogate weights {path} not found; train them with `bodil train-steady`.")
    with open(path, "rb") as f:
        try:
            header = json.loads(f.readline().decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise InputError(f"{path} is not a bodil steady surrogate weights file (format {FORMAT} expected).")
        arch = SteadyArchitecture(**header["architecture"])
        skeleton = steady_shapes(arch)
        try:
            network, state = eqx.tree_deserialise_leaves(f, skeleton)
        except (RuntimeError, ValueError, EOFError, OSError) as err:
            raise InputError(f"{path}: the weights do not fit the architecture in its header ({err}); the file is "
                             f"damaged: train it again.") from None
    return SteadySurrogate(network, state, arch, header.get("info", {}))


def pretrained_steady() -> SteadySurrogate:
    """The shipped steady surrogate (``WEIGHTS_FILE``; NN2 only, CPU-sized, see ``weights/README.md``)."""
    return load_steady(WEIGHTS_FILE)


def count_parameters(net) -> int:
    """Trainable numbers in a network, or its ``eqx.filter_eval_shape`` (batch-norm running statistics live in
    the state, not here)."""
    def inexact(x):
        return hasattr(x, "shape") and hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)

    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(eqx.filter(net, inexact))))


__all__: Sequence[str] = ["BATCH_AXIS", "FORMAT", "NN1", "NN1_CHANNELS", "NN2", "SteadyArchitecture", "SteadyNetwork",
                          "SteadySurrogate", "apply_batch", "build_steady", "WEIGHTS_FILE", "count_parameters", "infer",
                          "load_steady",
                          "pretrained_steady", "steady_shapes"]
