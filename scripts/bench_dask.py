"""Dask overhead: MOPAC water hexamer (CP, 3-body, PM7) on a 2-worker Dask cluster vs the thread executor.

Starts a `dask scheduler` and two `dask worker` processes on 127.0.0.1 (each ``--nthreads 1 --resources
"cores=1,memory=2"``), runs the same MBE with ``executor="threads"``, ``DaskExecutor(address, max_batch=1)``
(one fragment per Dask task) and ``DaskExecutor(address)`` (small fragments batched by predicted cost), all
``ncores=2, memory=4``, in turns (the batched executor's pump: at most two tasks per core, each sized by the cost
model and by an even share of what waits; workers send back only the properties the run keeps); checks each equals
QCManyBody's sequential result, and prints wall times,
the per-fragment overhead ``(Dask wall - threads wall) / fragments`` and the coordinator's own CPU time per
fragment during the schedule stage (this process's CPU time from ``RunStarted`` to ``RunFinished``: the
scheduler, the Dask client, materialising inputs; the programs run in the workers). Then, to separate per-run
from per-fragment costs: the batched run's CPU per extra fragment between the hexamer and a 10-water NoCP 3-body
MOPAC lattice (175 fragments), and the scheduler's own CPU per fragment with a FAKE executor that returns at once.

    PYTHONPATH=. python scripts/bench_dask.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
from benchlib.molecules import mbe, planar_hexamer, water_lattice
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.v2 import ManyBodyComputer

from qcmb_async import run_manybody
from qcmb_async.executors.dask import DaskExecutor

ROOT = Path(__file__).resolve().parents[1]


def hexamer_input() -> ManyBodyInput:
    """The planar MOPAC PM7 water hexamer, CP, 3-body, energy (no per-fragment results kept)."""
    return mbe(planar_hexamer(), "mopac", "pm7", None, bsse="nocp", max_nbody=3, keep_all=False)


@contextlib.contextmanager
def dask_cluster(workdir: Path, nworkers: int = 2) -> Iterator[str]:
    """A scheduler and ``nworkers`` single-core workers as subprocesses, each in its own session."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, args: list[str]) -> None:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    sched_file = workdir / "scheduler.json"
    try:
        spawn("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(sched_file)])
        deadline = time.time() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            if time.time() > deadline:
                raise RuntimeError("dask scheduler did not start; see " + str(workdir / "scheduler.log"))
            time.sleep(0.1)
        time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(nworkers):
            spawn(f"worker-{i}", ["distributed.cli.dask_worker", address, "--name", f"worker-{i}", "--host",
                                  "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                  "--resources", "cores=1,memory=2", "--local-directory", str(workdir / f"w{i}")])
        yield address
    finally:
        for group in (procs[1:], procs[:1]):  # workers first: without a scheduler they retry for a while
            for proc in group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


async def wait_for_workers(address: str, n: int) -> None:
    from distributed import Client

    async with Client(address, asynchronous=True, set_as_default=False) as client:
        await client.wait_for_workers(n, timeout=120)


async def timed(inp: ManyBodyInput, executor: Any) -> tuple[float, Any, float]:
    """Wall time of the whole run, the result, and this process's CPU seconds during the schedule stage."""
    return await store_run(inp, executor, None)


class InstantExecutor:
    """FAKE executor for the floor of the coordinator's own path: every fragment "finishes" at once with a made-up
    energy (the result is not compared with anything). What remains of the CPU time is the scheduler's alone."""

    name = "instant (fake)"
    clock = staticmethod(time.time)
    capacity = None

    async def __aenter__(self) -> InstantExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def run(self, job: Any) -> Any:
        from qcmb_async._core.compact import CompactResult
        from qcmb_async._core.contract import JobOutcome

        now = time.time()
        return JobOutcome(label=job.label, result=CompactResult({"energy": -1.0}), success=True, start=now, end=now,
                          host="here", worker="instant", pid=os.getpid())


def lattice_input() -> ManyBodyInput:
    """A larger MOPAC workload for the marginal cost per fragment: 10 waters, NoCP, 3-body (175 fragments)."""
    return mbe(water_lattice(10), "mopac", "pm7", None, bsse="nocp", max_nbody=3, keep_all=False)


NAMES = ("threads", "dask-1", "dask")
LABELS = {"threads": "threads (ncores=2)", "dask-1": "dask, one fragment per task",
          "dask": "dask, small fragments batched"}


def executor_for(name: str, address: str) -> Any:
    return {"threads": "threads", "dask-1": DaskExecutor(address, max_batch=1),
            "dask": DaskExecutor(address)}.get(name)


async def main(repeats: int) -> None:
    inp = hexamer_input()
    t0 = time.perf_counter()
    ref = ManyBodyComputer.from_manybodyinput(inp)
    sequential = time.perf_counter() - t0
    walls: dict[str, list[float]] = {n: [] for n in NAMES}
    sched: dict[str, list[float]] = {n: [] for n in NAMES}
    cpus: dict[str, list[float]] = {n: [] for n in NAMES}
    nfrag = 0
    with tempfile.TemporaryDirectory(prefix="qcmb-bench-dask-") as tmp, dask_cluster(Path(tmp)) as address:
        await wait_for_workers(address, 2)
        for name in NAMES:  # warm-up: program version checks, worker priming
            await timed(inp, executor_for(name, address))
        for _ in range(repeats):
            for name in NAMES:
                wall, result, cpu = await timed(inp, executor_for(name, address))
                diff = abs(float(result.return_result) - float(ref.return_result))
                assert diff < 1e-9, f"{name} differs from the sequential result by {diff}"
                meta = result.extras["qcmb_async"]
                if name != "threads":
                    assert {f["worker"] for f in meta["fragments"]} and all(
                        f["worker"].startswith("tcp://") for f in meta["fragments"])
                walls[name].append(wall)
                sched[name].append(meta["wall_time"])
                cpus[name].append(cpu)
                nfrag = len(meta["fragments"])
        large = lattice_input()
        floor, marginal = [], []
        for _ in range(repeats):
            _, small_res, small_cpu = await timed(inp, DaskExecutor(address))
            _, large_res, large_cpu = await timed(large, DaskExecutor(address))
            n_small = len(small_res.extras["qcmb_async"]["fragments"])
            n_large = len(large_res.extras["qcmb_async"]["fragments"])
            marginal.append((large_cpu - small_cpu) / (n_large - n_small))
            _, _, instant_cpu = await timed(large, InstantExecutor())
            floor.append(instant_cpu / n_large)

    med = {k: statistics.median(v) for k, v in walls.items()}
    med_sched = {k: statistics.median(v) for k, v in sched.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpus.items()}
    print(f"MOPAC PM7 water hexamer, CP, 3-body: {nfrag} fragments; ncores=2; medians of {repeats} runs")
    print(f"  load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (shared: noisy)")
    print(f"  sequential (QCManyBody)           {sequential:8.3f} s")
    for name in NAMES:
        runs = ", ".join(f"{w:.3f}" for w in walls[name])
        print(f"  {LABELS[name]:<33} {med[name]:8.3f} s   schedule stage {med_sched[name]:.3f} s   "
              f"coordinator CPU {1000 * med_cpu[name] / nfrag:.2f} ms/fragment   [{runs}]")
    for name in ("dask-1", "dask"):
        print(f"  {LABELS[name]}: added per fragment over threads "
              f"{1000 * (med[name] - med['threads']) / nfrag:.2f} ms (whole run), "
              f"{1000 * (med_sched[name] - med_sched['threads']) / nfrag:.2f} ms (schedule stage); "
              "targets: <= 2 ms added, coordinator CPU <= 0.2 ms/fragment")
    print(f"  coordinator CPU per extra fragment, batched dask (10-water NoCP 3-body, {n_large} fragments, against "
          f"the hexamer): {1000 * statistics.median(marginal):.2f} ms/fragment")
    print(f"  the scheduler's own path alone (a FAKE instant executor, {n_large} fragments): "
          f"{1000 * statistics.median(floor):.2f} ms/fragment")
    print("  results equal QCManyBody's sequential result to 1e-9 Eh")


def throughput_input(sleep: float, n: int = 16, max_nbody: int = 4) -> ManyBodyInput:
    """``n`` waters, NoCP MBE(``max_nbody``) with the FAKE sleep harness: fragments of ``sleep`` seconds each."""
    spec = mbe(water_lattice(n), "qcmb-fake-sleep", "fake", None, bsse="nocp", max_nbody=max_nbody, keep_all=False)
    data = spec.model_dump()
    data["specification"]["specification"]["(auto)"]["keywords"] = {"sleep": sleep}
    return ManyBodyInput(**data)


async def store_run(inp: ManyBodyInput, executor: Any, store: Path | None) -> tuple[float, Any, float]:
    """Like :func:`timed`, with the result store on (a fresh file; ``None``: off)."""
    from qcmb_async import events as ev

    cpu: dict[str, float] = {}

    def on_event(event: Any) -> None:
        if isinstance(event, ev.RunStarted):
            cpu["start"] = time.process_time()
        elif isinstance(event, ev.RunFinished):
            cpu["end"] = time.process_time()

    t0 = time.perf_counter()
    result = await run_manybody(inp, ncores=2, memory=4, executor=executor, store=None if store is None else str(store),
                                on_event=on_event)
    return time.perf_counter() - t0, result, cpu["end"] - cpu["start"]


async def throughput(repeats: int, sleep: float) -> None:
    """Millisecond fragments through the batched Dask executor, store on: fragments/s, CPU and wall added per fragment.

    The same plan runs with the thread executor (the reference wall), the batched Dask executor, and a FAKE instant
    executor (the scheduler's own path: no program, no transport); each against QCManyBody's sequential result.
    """
    sys.path.insert(0, str(ROOT))
    from tests.fakes import register_fakes

    register_fakes()
    inp = throughput_input(sleep)
    ref = float(ManyBodyComputer.from_manybodyinput(inp).return_result)
    rows: dict[str, list[tuple[float, float, int]]] = {"threads": [], "dask": [], "instant": [], "instant-nostore": []}
    with tempfile.TemporaryDirectory(prefix="qcmb-bench-dask-") as tmp, dask_cluster(Path(tmp)) as address:
        await wait_for_workers(address, 2)
        from distributed import Client

        async with Client(address, asynchronous=True, set_as_default=False) as client:
            await client.run(register_fakes)
            for rep in range(repeats + 1):  # the first round warms up (imports, program checks, calibration)
                for name in rows:
                    exe = {"threads": "threads", "dask": DaskExecutor(client)}.get(name, InstantExecutor())
                    store = None if name.endswith("nostore") else Path(tmp) / f"{name}-{rep}.sqlite"
                    wall, result, cpu = await store_run(inp, exe, store)
                    n = len(result.extras["qcmb_async"]["fragments"])
                    if not name.startswith("instant"):
                        diff = abs(float(result.return_result) - ref)
                        assert diff < 1e-9, f"{name} differs from the sequential result by {diff}"
                    if rep:
                        rows[name].append((wall, cpu, n))
    n = rows["dask"][0][2]
    med = {k: statistics.median(w for w, _, _ in v) for k, v in rows.items()}
    cpu = {k: statistics.median(c for _, c, _ in v) for k, v in rows.items()}
    print(f"\nthroughput: 16 waters NoCP MBE(4), {n} FAKE fragments of {1000 * sleep:g} ms, store on, 2 single-thread "
          f"Dask workers, ncores=2; medians of {repeats}; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs")
    for name, label in (("threads", "threads"), ("dask", "dask (batched, streamed)"),
                        ("instant", "scheduler path (FAKE instant executor)"),
                        ("instant-nostore", "scheduler path, no store")):
        walls = ", ".join(f"{w:.3f}" for w, _, _ in rows[name])
        print(f"  {label:<40} {med[name]:7.3f} s  {n / med[name]:8.0f} fragments/s  coordinator CPU "
              f"{1000 * cpu[name] / n:.3f} ms/fragment   [{walls}]")
    print(f"  dask: added wall per fragment over threads {1000 * (med['dask'] - med['threads']) / n:.3f} ms; "
          "results equal QCManyBody's sequential result to 1e-9 Eh")


async def floor(repeats: int) -> None:
    """The scheduler's own path only (FAKE instant executor, no cluster), store on and off: quick A/B of commits."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes import register_fakes

    register_fakes()
    inp = throughput_input(0.0)
    rows: dict[str, list[tuple[float, float, int]]] = {"store": [], "no store": []}
    with tempfile.TemporaryDirectory(prefix="qcmb-bench-floor-") as tmp:
        for rep in range(repeats + 1):
            for name in rows:
                store = Path(tmp) / f"{rep}.sqlite" if name == "store" else None
                wall, result, cpu = await store_run(inp, InstantExecutor(), store)
                if rep:
                    rows[name].append((wall, cpu, len(result.extras["qcmb_async"]["fragments"])))
    for name, runs in rows.items():
        n = runs[0][2]
        wall = statistics.median(w for w, _, _ in runs)
        cpu = statistics.median(c for _, c, _ in runs)
        print(f"scheduler path (FAKE instant executor), {n} fragments, {name:<8}: {n / wall:7.0f} fragments/s, "
              f"coordinator CPU {1000 * cpu / n:.3f} ms/fragment  (medians of {repeats}; load average "
              f"{os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--section", choices=("all", "mopac", "throughput", "floor"), default="all")
    parser.add_argument("--sleep", type=float, default=0.001, help="seconds per FAKE fragment (throughput section)")
    args = parser.parse_args()
    os.environ.setdefault("QCMB_ASYNC_STORE", "none")
    if args.section in ("all", "mopac"):
        anyio.run(main, args.repeats)
    if args.section in ("all", "throughput"):
        anyio.run(throughput, args.repeats, args.sleep)
    if args.section == "floor":
        anyio.run(floor, args.repeats)
