"""Scale-out and fault tolerance of BASIS/TMCMC: asynchronous dispatch, warm starts carried by the particles,
a real dask ``LocalCluster`` of two worker processes (a worker killed mid-stage), per-evaluation checkpoints
(the whole run killed with SIGKILL and resumed), and checkpoints that cannot be written.

Every comparison is exact: the same seed gives bit-identical particles, log-likelihoods and log-evidence
whatever the executor, the dispatch and the order in which evaluations finish.
"""

import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cloudpickle
import jax.numpy as jnp
import numpy as np
import pytest

import bodil
from bodil.inference.executors import DaskExecutor, SerialExecutor
from bodil.inference.smc import CheckpointError, basis, tmcmc
from bodil.prior import Params

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module

PARAMS = Params(x=bodil.Uniform(-2.0 * jnp.ones(2), 2.0 * jnp.ones(2)))


def bimodal(t):
    """A cheap two-mode log-likelihood (numpy only: the same value in every process)."""
    x = np.asarray(t["x"])
    return float(np.logaddexp(-0.5 * np.sum((x + 0.7) ** 2) / 0.09, np.log(3.0) - 0.5 * np.sum((x - 0.7) ** 2) / 0.09))


def jittery(t):
    """``bimodal`` after a pause that varies with theta, so that evaluations finish out of order."""
    time.sleep(zlib.crc32(np.asarray(t["x"]).tobytes()) % 7 * 2e-4)
    return bimodal(t), {"twice": 2.0 * np.asarray(t["x"])}


def same(a, b):
    return (np.array_equal(a.posterior.x.values, b.posterior.x.values)
            and np.array_equal(a.sample_stats.log_likelihood.values, b.sample_stats.log_likelihood.values)
            and np.array_equal(a.sample_stats.log_prior.values, b.sample_stats.log_prior.values)
            and a.attrs["log_evidence"] == b.attrs["log_evidence"]
            and np.array_equal(a.smc_stages.q.values, b.smc_stages.q.values))


def run(loglik=bimodal, **options):
    return basis(loglik, PARAMS, 60, seed=5, **options)


@pytest.fixture(scope="module")
def reference():
    return run()


# ---------------------------------------------------------------------------------------------- in-process


def test_async_dispatch_matches_sync_in_any_order():
    with ThreadPoolExecutor(3) as pool:
        for sampler, options in [(basis, dict(lmax=2, burn_in=1)), (tmcmc, dict(max_chain_length=3))]:
            sync = sampler(jittery, PARAMS, 60, seed=2, dispatch="sync", **options)
            asynchronous = sampler(jittery, PARAMS, 60, seed=2, executor=pool, dispatch="async", **options)
            assert same(sync, asynchronous)
            np.testing.assert_array_equal(asynchronous.posterior.twice.values, 2.0 * asynchronous.posterior.x.values)
    with pytest.raises(ValueError, match="dispatch='async' needs an executor with a dispatch method"):
        run(dispatch="async")


def lineage(theta, start):
    """Carries ``(x, number of moves)``: each particle's start must be the solution at its own theta."""
    moves = 0 if start is None else start[1] + 1
    return bimodal(theta), (np.array(theta["x"]), moves)


def test_warm_starts_travel_with_the_particle(tmp_path):
    serial = run(lineage, warm_start=True, lmax=2, checkpoint=tmp_path / "a.ckpt")
    with ThreadPoolExecutor(2) as pool:
        pooled = run(lineage, warm_start=True, lmax=2, executor=pool, checkpoint=tmp_path / "b.ckpt")
    assert same(serial, pooled)
    a, b = (pickle.loads((tmp_path / f).read_bytes())["state"] for f in ("a.ckpt", "b.ckpt"))
    assert [s[1] for s in a["starts"]] == [s[1] for s in b["starts"]]
    for x, (x_start, moves) in zip(a["x"], a["starts"]):
        np.testing.assert_array_equal(x, x_start)
    assert max(s[1] for s in a["starts"]) > 0
    with pytest.raises(ValueError, match="warm_start=True needs an executor that evaluates one theta"):
        run(lineage, warm_start=True, executor=bodil.inference.BatchExecutor())


# ---------------------------------------------------------------------------------------------- checkpoints


def test_disk_full_and_unwritable_folder(tmp_path, monkeypatch, reference):
    path = tmp_path / "run.ckpt"
    real_fsync, syncs = os.fsync, {"n": 0}

    def fsync(fd):  # the fifth checkpoint file finds the disk full
        syncs["n"] += 1
        if syncs["n"] == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint '.*run\.ckpt.*': No space left"):
        run(checkpoint=path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    assert pickle.loads(path.read_bytes())["format"] == "bodil.smc/2"  # the previous checkpoint is whole
    assert same(reference, run(checkpoint=path, resume=True))
    assert not (tmp_path / "run.ckpt.evaluations").exists()

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="cannot create the checkpoint folder .*not-a-folder"):
        run(checkpoint=blocker / "run.ckpt")


SCRIPT = """
import sys, time
import jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {tests!r})
from concurrent.futures import ThreadPoolExecutor
from test_dask import PARAMS, slow, basis
with ThreadPoolExecutor(2) as pool:
    basis(slow, PARAMS, 60, seed=5, executor=pool, checkpoint={path!r})
"""


def slow(t):
    time.sleep(2e-3)
    return bimodal(t)


def test_killed_run_resumes_to_the_same_result(tmp_path, reference):
    path = tmp_path / "run.ckpt"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=os.path.dirname(__file__), path=str(path))))
    proc = subprocess.Popen([sys.executable, str(script)])
    journal = tmp_path / "run.ckpt.evaluations"
    try:
        deadline = time.monotonic() + 60
        while not (journal.exists() and any(p.name.startswith("stage-00002-") for p in journal.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of stage 2, after some of its evaluations
    finally:
        proc.kill()
        proc.wait()
    state = pickle.loads(path.read_bytes())["state"]
    assert state["stage"] == 1 and any(journal.iterdir())
    calls = []

    def counted(t):
        calls.append(1)
        return bimodal(t)

    resumed = run(counted, checkpoint=path, resume=True)
    assert same(reference, resumed)
    full = sum(int(h) for h in reference.smc_stages.evaluations.values[2:])
    assert len(calls) < full  # the journaled evaluations of stage 2 were not run again


# ---------------------------------------------------------------------------------------------- dask


@pytest.fixture(scope="module")
def dask():
    with DaskExecutor(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as ex:
        yield ex


def test_dask_cluster_gives_the_in_process_result(dask, reference):
    assert len(dask.client.scheduler_info()["workers"]) == 2
    assert same(reference, run(executor=dask))  # asynchronous dispatch
    assert same(reference, run(executor=dask, dispatch="sync"))
    with_aux = run(jittery, executor=dask)
    assert same(run(jittery, executor=SerialExecutor()), with_aux)


class DiesOnce:
    """``bimodal``, but the first call on a worker process exits it at once (once per ``marker``)."""

    def __init__(self, marker):
        self.marker = marker

    def __call__(self, t):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return bimodal(t)
        os.close(fd)
        os._exit(1)


def test_killed_worker_is_replaced_and_its_task_rerun(dask, reference, tmp_path):
    before = set(dask.client.scheduler_info()["workers"])
    resumed = run(DiesOnce(str(tmp_path / "died")), executor=dask)
    assert (tmp_path / "died").exists()
    assert same(reference, resumed)
    dask.client.wait_for_workers(2, timeout=30)
    assert set(dask.client.scheduler_info()["workers"]) != before  # the nanny started a new worker process


def test_workers_keep_the_function_between_tasks(dask):
    calls = Counter()
    run(calls, executor=dask)
    counts = dask.client.run(lambda dask_worker: sum(p.fn.n for p in dask_worker.plugins.values()
                                                     if type(getattr(p, "fn", None)).__name__ == "Counter"))
    assert sum(counts.values()) >= 60 and all(c > 1 for c in counts.values())  # one object per worker, reused


class Counter:
    """``bimodal`` counting its calls on the object that the worker holds."""

    def __init__(self):
        self.n = 0

    def __call__(self, t):
        self.n += 1
        return bimodal(t)
