"""The worker side of ``DaskExecutor`` (imports ``distributed``: loaded only when a ``DaskExecutor`` is used)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from distributed import WorkerPlugin, get_worker


class FunctionPlugin(WorkerPlugin):
    """Carries one function to every worker, where it stays for the worker's lifetime (with its JIT caches)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = f"bodil-fn-{uuid.uuid4().hex}"


def call(name: str, theta: Any) -> Any:
    """``fn(theta)`` with the ``fn`` installed on this worker under ``name``."""
    return get_worker().plugins[name].fn(theta)
