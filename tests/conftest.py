"""Tests run in float64: Hessians and tight tolerances need it. bodil itself never sets this globally.

Compiled XLA programs are cached on disk for the session (``.pytest_cache/jax``), so that the processes of one
run share them: the two xdist workers, the notebook kernels and the subprocess of the killed-run test compile
the same tumour pipeline and the same small problems (a second ``bodil ctv`` on the tiny grid: 26 s -> 17 s).
The variables are inherited by those processes; a fresh clone starts with an empty cache.

Most tests compile small programs and run them a few times, so XLA's optimisation passes cost more than they
save: tests run with ``jax_disable_most_optimizations`` (also for their subprocesses and notebook kernels, through
``JAX_DISABLE_MOST_OPTIMIZATIONS=1``), except those marked ``xla_optimized``, whose sampling or training runs are
long enough to pay for them. On this 2-core machine the test times summed to 1024 s instead of 1137 s (``make test``
544 s instead of 587-634 s); without the marks a BASIS notebook took 116 s instead of 49 s. Results do not depend
on it beyond rounding.
"""

import os
import pathlib

for name, value in (("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).parent.parent / ".pytest_cache" / "jax")),
                    ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
                    ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0"),
                    ("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")):
    os.environ.setdefault(name, value)

import jax  # noqa: E402  (after the cache variables)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])  # if jax came in first
jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))

import pytest  # noqa: E402

# Global state a test may read but must leave as it found it (the suite's order must not matter).
_JAX_FLAGS = ("jax_enable_x64", "jax_disable_most_optimizations", "jax_default_matmul_precision",
              "jax_numpy_rank_promotion", "jax_debug_nans", "jax_disable_jit", "jax_platforms")


def _read(name):
    """A flag's value: states are attributes of ``jax.config``, plain flags (``jax_disable_most_optimizations``)
    are read."""
    try:
        return getattr(jax.config, name)
    except AttributeError:
        return jax.config.read(name)


def _snapshot():
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest's own bookkeeping
    return {name: _read(name) for name in _JAX_FLAGS}, env


@pytest.fixture(autouse=True)
def _global_state_is_restored(request):
    """Fail a test that leaves JAX's configuration or the environment changed (``monkeypatch`` restores its
    changes before this check runs)."""
    before_flags, before_env = _snapshot()
    yield
    after_flags, after_env = _snapshot()
    changed = {k: (before_flags[k], after_flags[k]) for k in _JAX_FLAGS if before_flags[k] != after_flags[k]}
    changed.update({f"${k}": (before_env.get(k), after_env.get(k))
                    for k in set(before_env) | set(after_env) if before_env.get(k) != after_env.get(k)})
    assert not changed, f"{request.node.nodeid} left global state changed (before, after): {changed}"


# Modules whose tests take tens of seconds each (notebooks, tumour pipeline runs, Laplace and MAP compilations),
# run first with ``--order heavy-first``. On fresh clones it measured 587, 601 and 633 s against 598 s in file order
# (the noise of this machine is of that size), so file order stays the default.
HEAVY_FIRST = ("test_examples.py", "test_tumor_model.py", "test_tumor_cli.py", "test_surrogate.py", "test_laplace.py",
               "test_optimize.py")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """XLA optimises only the programs of tests marked ``xla_optimized`` (and the module fixtures they set up);
    the flag is restored after each test."""
    before = _read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", item.get_closest_marker("xla_optimized") is None)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def pytest_addoption(parser):
    parser.addoption("--order", default="file", metavar="file|heavy-first|reverse|SEED",
                     help="run the tests in file order (default), the modules in HEAVY_FIRST first and the rest in "
                          "file order, reversed, or shuffled by an integer seed: the suite must pass in any order")


def pytest_collection_modifyitems(config, items):
    order = config.getoption("--order")
    if order == "heavy-first":  # a stable sort: the order within each module is kept
        rank = {name: k for k, name in enumerate(HEAVY_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))
    elif order == "reverse":
        items.reverse()
    elif order not in ("file", "heavy-first"):
        import random

        random.Random(int(order)).shuffle(items)  # the same order in every xdist worker
