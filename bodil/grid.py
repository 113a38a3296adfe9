"""Uniform structured grids over space-time.

A ``Grid`` names its axes, knows their bounds and how points sit on each axis:

``"node"``
    ``n`` points including both ends: ``x_i = lower + i h``, ``h = (upper - lower) / (n - 1)``.
    Used for time, where ``u^0`` is the initial and ``u^{n-1}`` the final state.
``"periodic"``
    ``n`` points on a circle of length ``upper - lower``: ``x_i = lower + i h``, ``h = (upper - lower) / n``
    (Amoudruz et al. 2025, eq. 17: ``x_i = i dx``, ``dx = L / n_x``).
``"cell"``
    ``n`` cell centres: ``x_i = lower + (i + 1/2) h``, ``h = (upper - lower) / n``. Used for no-flux walls,
    which then sit on the faces ``lower`` and ``upper``.

The grid is a frozen, hashable dataclass, so it can be a static argument of a jitted function.
Coordinates are NumPy arrays (they are constants of the problem, not traced values).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

LAYOUTS = ("node", "periodic", "cell")


@dataclasses.dataclass(frozen=True)
class Grid:
    """A uniform grid: ``shape``, ``lower``/``upper`` bounds, axis ``names`` and per-axis ``layout``.

    Example:
        >>> grid = Grid(shape=(65, 16), lower=(0.0, 0.0), upper=(1.0, 1.0), names=("t", "x"),
        ...             layout=("node", "periodic"))
        >>> grid.spacing
        (0.015625, 0.0625)
    """

    shape: tuple[int, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    names: tuple[str, ...] = ()
    layout: tuple[str, ...] = ()

    def __post_init__(self):
        shape = tuple(int(n) for n in np.atleast_1d(self.shape))
        ndim = len(shape)
        lower = tuple(float(a) for a in np.broadcast_to(np.asarray(self.lower, float), (ndim,)))
        upper = tuple(float(b) for b in np.broadcast_to(np.asarray(self.upper, float), (ndim,)))
        names = tuple(self.names) if self.names else tuple(f"x{i}" for i in range(ndim))
        layout = self.layout
        if isinstance(layout, str):
            layout = (layout,) * ndim
        layout = tuple(layout) if layout else ("node",) * ndim
        for field, value in (("names", names), ("layout", layout)):
            if len(value) != ndim:
                raise ValueError(f"Grid: {field} has {len(value)} entries but shape {shape} has {ndim} axes; "
                                 f"give one entry per axis.")
        if len(set(names)) != ndim:
            raise ValueError(f"Grid: axis names must be distinct, got {names}.")
        for name, kind, n, a, b in zip(names, layout, shape, lower, upper):
            if kind not in LAYOUTS:
                raise ValueError(f"Grid: axis {name!r} has layout {kind!r}; choose one of {LAYOUTS}.")
            if n < (2 if kind == "node" else 1):
                raise ValueError(f"Grid: axis {name!r} needs at least {2 if kind == 'node' else 1} points, got {n}.")
            if not b > a:
                raise ValueError(f"Grid: axis {name!r} has upper bound {b} <= lower bound {a}.")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "layout", layout)

    # ------------------------------------------------------------------ basic properties
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def spacing(self) -> tuple[float, ...]:
        """Distance between neighbouring points along each axis."""
        return tuple((b - a) / (n - 1 if kind == "node" else n)
                     for n, a, b, kind in zip(self.shape, self.lower, self.upper, self.layout))

    @property
    def periodic(self) -> tuple[bool, ...]:
        return tuple(kind == "periodic" for kind in self.layout)

    def axis(self, name: str | int) -> int:
        """Index of an axis given its name (or its index)."""
        if isinstance(name, (int, np.integer)):
            if not -self.ndim <= name < self.ndim:
                raise ValueError(f"Grid has {self.ndim} axes; axis {name} does not exist.")
            return int(name) % self.ndim
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"Grid has no axis named {name!r}; its axes are {self.names}.") from None

    def h(self, name: str | int) -> float:
        """Spacing along one axis."""
        return self.spacing[self.axis(name)]

    # ------------------------------------------------------------------ coordinates
    def coordinates(self, name: str | int) -> np.ndarray:
        """1-D coordinates of the points along one axis."""
        i = self.axis(name)
        n, a, h = self.shape[i], self.lower[i], self.spacing[i]
        offset = 0.5 if self.layout[i] == "cell" else 0.0
        return a + (np.arange(n) + offset) * h

    def mesh(self, *names: str | int) -> tuple[np.ndarray, ...]:
        """Broadcastable coordinate arrays (``indexing="ij"``) of the given axes, all axes by default.

        The arrays have the full grid rank with size 1 along axes that were not asked for, so
        ``x, y = grid.mesh("x", "y")`` broadcasts against fields of shape ``grid.shape``.
        """
        axes = [self.axis(n) for n in names] if names else list(range(self.ndim))
        out = []
        for i in axes:
            shape = [1] * self.ndim
            shape[i] = self.shape[i]
            out.append(self.coordinates(i).reshape(shape))
        return tuple(out)

    def subgrid(self, names: Sequence[str | int]) -> "Grid":
        """The grid made of some of the axes (for example the space axes of a space-time grid)."""
        axes = [self.axis(n) for n in names]
        return Grid(shape=tuple(self.shape[i] for i in axes), lower=tuple(self.lower[i] for i in axes),
                    upper=tuple(self.upper[i] for i in axes), names=tuple(self.names[i] for i in axes),
                    layout=tuple(self.layout[i] for i in axes))

    def zeros(self, dtype=None) -> jnp.ndarray:
        return jnp.zeros(self.shape, dtype=dtype)

    def check_field(self, u, what: str = "field") -> None:
        """Raise a clear error when ``u`` does not have the grid's shape."""
        if tuple(np.shape(u)) != self.shape:
            raise ValueError(f"{what} has shape {tuple(np.shape(u))} but the grid has shape {self.shape} "
                             f"(axes {self.names}).")

    # ------------------------------------------------------------------ interpolation
    def interpolator(self, points, axes: Sequence[str | int] | None = None) -> "LinearInterpolator":
        """Multilinear interpolation of fields on this grid at scattered ``points``.

        Args:
            points: array of shape ``(m, k)`` (or ``(m,)`` when ``k = 1``) of coordinates along ``axes``.
            axes: the ``k`` axes the points refer to, which must be the leading axes of the grid; all axes
                by default. Remaining axes of the field are kept: the result has shape ``(m, *rest)``.

        Returns:
            A ``LinearInterpolator``, a function ``u -> values`` with precomputed indices and weights.
        """
        axes = [self.axis(a) for a in axes] if axes is not None else list(range(self.ndim))
        if axes != list(range(len(axes))):
            raise ValueError(f"interpolator: axes must be the leading axes of the grid {self.names}, got "
                             f"{[self.names[a] for a in axes]}; transpose the field or list the axes in order.")
        pts = np.asarray(points, dtype=float)
        if pts.ndim == 1:
            pts = pts[:, None]
        if pts.ndim != 2 or pts.shape[1] != len(axes):
            raise ValueError(f"interpolator: points must have shape (m, {len(axes)}) for axes "
                             f"{[self.names[a] for a in axes]}, got {np.shape(points)}.")
        if not np.all(np.isfinite(pts)):
            raise ValueError("interpolator: points contain NaN or infinite coordinates.")
        corner_idx, corner_w = [], []
        for j, i in enumerate(axes):
            n, h, kind = self.shape[i], self.spacing[i], self.layout[i]
            offset = 0.5 if kind == "cell" else 0.0
            s = (pts[:, j] - self.lower[i]) / h - offset
            if kind == "periodic":
                i0 = np.floor(s).astype(int)
                w1 = s - i0
                i0, i1 = i0 % n, (i0 + 1) % n
            else:
                lo, hi = 0.0, n - 1.0
                bad = (s < lo - 1e-9) | (s > hi + 1e-9)
                if np.any(bad):
                    raise ValueError(f"interpolator: {int(bad.sum())} point(s) lie outside axis "
                                     f"{self.names[i]!r} range [{self.coordinates(i)[0]}, {self.coordinates(i)[-1]}].")
                s = np.clip(s, lo, hi)
                i0 = np.minimum(np.floor(s).astype(int), n - 2) if n > 1 else np.zeros_like(s, int)
                w1 = s - i0
                i1 = np.minimum(i0 + 1, n - 1)
            corner_idx.append((i0, i1))
            corner_w.append((1.0 - w1, w1))
        k = len(axes)
        idx, wts = [], []
        for corner in range(2 ** k):
            bits = [(corner >> j) & 1 for j in range(k)]
            idx.append(np.stack([corner_idx[j][b] for j, b in enumerate(bits)], axis=0))
            wts.append(np.prod([corner_w[j][b] for j, b in enumerate(bits)], axis=0))
        return LinearInterpolator(axes=tuple(axes), index=np.stack(idx, 0), weight=np.stack(wts, 0))


@dataclasses.dataclass(frozen=True, eq=False)
class LinearInterpolator:
    """Precomputed multilinear interpolation: ``values[m] = sum_c weight[c, m] * u[index[c, :, m]]``."""

    axes: tuple[int, ...]
    index: np.ndarray  # (2^k, k, m) integer indices of the corners
    weight: np.ndarray  # (2^k, m) weights

    def __call__(self, u):
        u = jnp.asarray(u)
        w = jnp.asarray(self.weight, dtype=u.dtype)
        total = 0.0
        for c in range(self.index.shape[0]):
            vals = u[tuple(self.index[c, j] for j in range(len(self.axes)))]  # (m, *rest)
            total = total + w[c].reshape(w.shape[1:] + (1,) * (vals.ndim - 1)) * vals
        return total

    @property
    def num_points(self) -> int:
        return int(self.weight.shape[1])
