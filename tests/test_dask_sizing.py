"""Fragments sized from what a Dask cluster has (LocalClusters on this machine; SLURM: tests/test_hpc_sizing.py).

A plain Dask cluster (workers that declare no resources) is used as it is: its workers' ``nthreads`` and
``memory_limit`` size the fragments and bound what runs at once; declared ``cores``/``memory`` resources
still win. Expected energies come from the threads executor on this machine; expected sizes from the
LocalCluster's own settings, written in each test.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest

from qcmb_async import InputError, run_manybody
from qcmb_async._core.cost import CostModel, allotment
from qcmb_async._core.options import options_for
from qcmb_async._core.resources import WorkerLimits
from qcmb_async.executors.dask import DaskExecutor
from tests.helpers import max_overlap, mbe_input, require_module, require_program, waters

TOL = 1e-10
GIB = 1024**3


@pytest.fixture(scope="module", autouse=True)
def _needs_dask_and_mopac() -> None:
    require_module("distributed")
    require_program("mopac")


def _inp() -> Any:
    return mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(4))


def _records(result: Any) -> list[dict[str, Any]]:
    return list(result.extras["qcmb_async"]["fragments"])


def _most_at_once_per_worker(records: list[dict[str, Any]]) -> dict[str, int]:
    by_worker: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r["start"] is not None:
            by_worker[r["worker"]].append((r["start"], r["end"]))
    return {w: max_overlap(iv) for w, iv in by_worker.items()}


def _plain_cluster(threads: int, memory: str, **kw: Any) -> Any:
    from distributed import LocalCluster

    return LocalCluster(n_workers=1, threads_per_worker=threads, memory_limit=memory, processes=True,
                        asynchronous=True, dashboard_address=":0", **kw)


async def _threads_reference() -> float:
    result = await run_manybody(_inp(), executor="threads", ncores=2, store=None)
    return float(result.return_result)


@pytest.mark.asyncio
async def test_plain_local_cluster_equals_threads_and_is_sized_from_its_workers() -> None:
    """LocalCluster() as every Dask user has it: no resources; 2 threads and 3 GiB size the run."""
    from distributed import Client

    reference = await _threads_reference()
    async with _plain_cluster(2, "3GiB") as lc, Client(lc, asynchronous=True, set_as_default=False) as client:
        result = await run_manybody(_inp(), scheduler=client, store=None)
    meta = result.extras["qcmb_async"]
    assert abs(float(result.return_result) - reference) < TOL
    assert meta["executor"] == "dask"
    assert (meta["ncores"], meta["memory"]) == (2, pytest.approx(3.0))  # the worker's nthreads, memory_limit
    records = _records(result)
    assert all(r["cores"] == 1 and r["memory"] <= 3.0 / 2 + 1e-9 for r in records), records
    assert max(_most_at_once_per_worker(records).values()) <= 2


@pytest.mark.asyncio
async def test_plain_cluster_never_runs_more_cores_than_worker_threads() -> None:
    """Two-core fragments on a 2-thread worker without resources: Dask would run two at once; the gate one."""
    from distributed import Client

    reference = await _threads_reference()
    async with _plain_cluster(2, "4GiB") as lc, Client(lc, asynchronous=True, set_as_default=False) as client:
        result = await run_manybody(_inp(), scheduler=client, fragment_ncores=2, store=None)
    assert abs(float(result.return_result) - reference) < TOL
    records = _records(result)
    assert all(r["cores"] == 2 for r in records)
    assert _most_at_once_per_worker(records) and max(_most_at_once_per_worker(records).values()) == 1


@pytest.mark.asyncio
async def test_fragment_larger_than_the_largest_worker_names_it() -> None:
    from distributed import Client

    async with _plain_cluster(2, "2GiB") as lc, Client(lc, asynchronous=True, set_as_default=False) as client:
        with pytest.raises(InputError, match=r"fragment_ncores=4 is more than the largest worker.*\(2 cores, 2 GiB\)"):
            await run_manybody(_inp(), scheduler=client, fragment_ncores=4, store=None)
        with pytest.raises(InputError, match=r"fragment_memory=3.0 GiB is more than the largest worker.*2 GiB"):
            await run_manybody(_inp(), scheduler=client, fragment_memory=3, store=None)


@pytest.mark.asyncio
async def test_declared_resources_are_still_honoured() -> None:
    """Workers that declare cores/memory: those, not their threads, bound the fragments (1 core, 2 GiB)."""
    from distributed import Client

    reference = await _threads_reference()
    async with _plain_cluster(2, "8GiB", resources={"cores": 1, "memory": 2}) as lc, \
            Client(lc, asynchronous=True, set_as_default=False) as client:
        result = await run_manybody(_inp(), scheduler=client, store=None)
    meta = result.extras["qcmb_async"]
    assert abs(float(result.return_result) - reference) < TOL
    assert (meta["ncores"], meta["memory"]) == (1, 2.0)
    records = _records(result)
    assert all(r["cores"] == 1 and r["memory"] <= 2.0 for r in records)
    assert max(_most_at_once_per_worker(records).values()) == 1  # 2 threads, but 1 declared core


@pytest.mark.asyncio
async def test_finite_difference_frequencies_through_a_client_ask_what_the_workers_have() -> None:
    """FD frequencies sized from the workers (0.5 GiB per core), not from 80 % of this machine's memory."""
    from distributed import Client

    from qcmb_async import frequencies

    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2))
    async with _plain_cluster(2, "1GiB") as lc, Client(lc, asynchronous=True, set_as_default=False) as client:
        res = await frequencies(inp, method="finite-difference", scheduler=client, store=None)
    records = res.extras["fragments"]
    assert records and all(r["memory"] <= 0.5 + 1e-9 and r["cores"] == 1 for r in records), \
        sorted({(r["cores"], r["memory"]) for r in records})
    assert res.extras["ncores"] == 2
    local = await frequencies(inp, method="finite-difference", executor="threads", ncores=2, store=None)
    assert abs(res.frequencies - local.frequencies).max() < 1e-6


def test_automatic_cores_never_exceed_the_largest_worker() -> None:
    """docs/hpc.md's way 3 shape: 20 jobs of 32 cores; a large parallel fragment gets at most 32, not 64."""
    frags = [SimpleNamespace(label=f"f{i}", group="g", size=size, program="psi4")
             for i, size in enumerate([400.0, 30.0, 30.0])]
    model = CostModel({"g": 3.5})
    free = allotment(frags, model, ncores=640, memory=2400, auto_memory=True)
    assert max(free.values()) > 32  # the bound matters: without it the cost model asks for more
    bounded = allotment(frags, model, ncores=640, memory=2400, auto_memory=True, max_cores=32)
    assert max(bounded.values()) == 32


def test_options_for_a_cluster_take_the_workers_not_this_machine() -> None:
    exe = SimpleNamespace(capacity=(64.0, 256.0), limits=WorkerLimits.of([(32, 120.0), (32, 136.0)], "test"))
    opts = options_for(exe)
    assert (opts.ncores, opts.memory) == (64, 256.0)
    assert opts.fragment_memory == pytest.approx(120.0 / 32)  # the tighter worker's GiB per core
    assert opts.max_fragment_ncores == 32
    with pytest.raises(InputError, match=r"fragment_ncores=64 is more than the largest worker.*32 cores"):
        options_for(exe, fragment_ncores=64)


@pytest.mark.asyncio
async def test_dask_executor_limits_of_a_plain_cluster() -> None:
    from distributed import Client

    async with _plain_cluster(2, "3GiB") as lc, Client(lc, asynchronous=True, set_as_default=False) as client, \
            DaskExecutor(client) as exe:
        assert exe.capacity == (2.0, pytest.approx(3.0))
        limits = exe.limits
        assert limits is not None and limits.cores == 2 and limits.memory == pytest.approx(3.0)
        assert limits.per_core == pytest.approx(1.5)
        assert "nthreads" in limits.source


@pytest.mark.asyncio
async def test_uneven_plain_workers_take_only_fragments_they_can_hold() -> None:
    """A 2-thread and a 1-thread worker, no resources: automatic fragments fit the smaller (1 core); explicit
    two-core fragments go only to the 2-thread worker."""
    from distributed import Client, Scheduler, Worker

    reference = await _threads_reference()
    async with Scheduler(host="127.0.0.1", port=0, dashboard_address=":0") as sched, \
            Worker(sched.address, nthreads=2, memory_limit="2GiB", name="two") as two, \
            Worker(sched.address, nthreads=1, memory_limit="2GiB", name="one"), \
            Client(sched.address, asynchronous=True, set_as_default=False) as client:
        auto = await run_manybody(_inp(), scheduler=client, store=None)
        big = await run_manybody(_inp(), scheduler=client, fragment_ncores=2, store=None)
    assert abs(float(auto.return_result) - reference) < TOL
    assert abs(float(big.return_result) - reference) < TOL
    assert auto.extras["qcmb_async"]["ncores"] == 3  # 2 + 1 threads
    assert all(r["cores"] == 1 and r["memory"] <= 2.0 + 1e-9 for r in _records(auto))
    assert {r["worker"] for r in _records(big)} == {two.address}


@pytest.mark.asyncio
async def test_workers_without_a_memory_limit_offer_a_share_of_their_host() -> None:
    import psutil
    from distributed import Client

    async with _plain_cluster(2, 0) as lc, \
            Client(lc, asynchronous=True, set_as_default=False) as client, DaskExecutor(client) as exe:
        cores, memory = exe.capacity
    assert cores == 2
    assert 0 < memory <= psutil.virtual_memory().total / GIB
