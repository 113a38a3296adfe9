"""Progress meters for long work, passed in by the caller (after diffrax's progress meters).

A meter is a small immutable object with three methods; the state it returns is what changes:

* ``state = meter.init(desc, total=None, unit="it", initial=0)`` opens a bar for one job;
* ``state = meter.step(state, n=1, **postfix)`` advances it by ``n`` and shows ``postfix`` (numbers or
  short strings, for example the loss);
* ``meter.close(state)`` ends it.

``NoProgress`` does nothing; ``TqdmProgress`` draws a ``tqdm`` bar. Every long-running bodil function
takes ``progress: bool | ProgressMeter``; ``as_meter`` turns ``True`` / ``False`` into the tqdm / no-op
meter. ``meter.track(iterable, desc)`` wraps a loop and closes the bar when the loop ends or raises.
Meters run on the host, outside ``jax.jit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterable, Iterator, Protocol, runtime_checkable


@runtime_checkable
class ProgressMeter(Protocol):
    """What bodil's loops call: ``init`` once, ``step`` per unit of work, ``close`` at the end."""

    def init(self, desc: str, total: int | None = None, unit: str = "it", initial: int = 0) -> Any: ...

    def step(self, state: Any, n: int = 1, **postfix: Any) -> Any: ...

    def close(self, state: Any) -> None: ...


class _Tracking:
    """``track``: iterate with a bar that is closed however the loop ends."""

    def track(self, iterable: Iterable, desc: str, total: int | None = None, unit: str = "it") -> Iterator:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        with self.session(desc, total=total, unit=unit) as bar:
            for item in iterable:
                yield item
                bar.step()

    @contextlib.contextmanager
    def session(self, desc: str, total: int | None = None, unit: str = "it", initial: int = 0):
        """Context manager around ``init``/``close``; the object it yields has ``step(n=1, **postfix)``."""
        handle = _Handle(self, self.init(desc, total=total, unit=unit, initial=initial))
        try:
            yield handle
        finally:
            self.close(handle.state)


@dataclasses.dataclass
class _Handle:
    meter: Any
    state: Any

    def step(self, n: int = 1, **postfix: Any) -> None:
        self.state = self.meter.step(self.state, n, **postfix)


@dataclasses.dataclass(frozen=True)
class NoProgress(_Tracking):
    """A meter that shows nothing."""

    def init(self, desc: str, total: int | None = None, unit: str = "it", initial: int = 0) -> None:
        return None

    def step(self, state: None, n: int = 1, **postfix: Any) -> None:
        return None

    def close(self, state: None) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class TqdmProgress(_Tracking):
    """A ``tqdm.auto`` bar per job.

    Attributes:
        leave: keep finished bars on screen (``False``: inner loops such as MAP solves vanish when done).
        mininterval: seconds between redraws.
    """

    leave: bool = False
    mininterval: float = 0.5

    def init(self, desc: str, total: int | None = None, unit: str = "it", initial: int = 0):
        from tqdm.auto import tqdm

        return tqdm(desc=desc, total=total, unit=unit, initial=initial, leave=self.leave,
                    mininterval=self.mininterval)

    def step(self, state, n: int = 1, **postfix: Any):
        if postfix:
            state.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                              refresh=False)
        state.update(n)
        return state

    def close(self, state) -> None:
        state.close()


def as_meter(progress: bool | ProgressMeter | None) -> ProgressMeter:
    """``True`` -> ``TqdmProgress()``, ``False``/``None`` -> ``NoProgress()``, a meter -> itself."""
    if progress is None or progress is False:
        return NoProgress()
    if progress is True:
        return TqdmProgress()
    if isinstance(progress, ProgressMeter):
        return progress
    raise TypeError(f"progress must be True, False or a progress meter (bodil.progress.TqdmProgress(), "
                    f"NoProgress() or your own object with init/step/close), got {type(progress).__name__}.")


__all__ = ["NoProgress", "ProgressMeter", "TqdmProgress", "as_meter"]
