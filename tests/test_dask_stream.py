"""Batched Dask tasks that send outcomes back while they run: same results, store rows, records and events as the
thread executor, and a worker killed mid-batch loses no fragment it sent back (Dask's rerun skips those)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from qcmb_async import plan_manybody, run_manybody
from qcmb_async._core import events as ev
from qcmb_async.executors.dask import DaskExecutor
from tests.fakes import register_fakes
from tests.helpers import mbe_input, require_module, waters

try:  # a worker plugin must be importable on the workers: defined at module level
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - require_module skips below
    WorkerPlugin = object  # type: ignore[assignment,misc]


class RegisterFakes(WorkerPlugin):  # type: ignore[misc,valid-type]
    """The FAKE harnesses on every worker, restarted ones included (a nanny restarts a killed worker)."""

    def setup(self, worker: Any) -> None:
        register_fakes()


def _fake_input(tmp_path: Path, sleep: float, n: int = 4) -> Any:
    return mbe_input("qcmb-fake-sleep", "fake", "none", bsse="nocp", max_nbody=2, molecule=waters(n),
                     keywords={"sleep": sleep, "calls_file": str(tmp_path / "calls.txt")})


def _geometry_keys(inp: Any) -> dict[str, str]:
    """Fragment label -> the line the FAKE harness writes for it (sum of its absolute coordinates)."""
    plan = plan_manybody(inp)
    out = {}
    for f in plan.fragments:
        geom = plan.materialise(f).atomic_input.molecule.geometry
        out[f.label] = f"{float(sum(abs(geom).ravel())):.8f}"
    assert len(set(out.values())) == len(out)  # the lines tell the fragments apart
    return out


def _cluster(distributed: Any) -> Any:
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                    resources={"cores": 1, "memory": 2}, asynchronous=True)


def _sequential_energy(inp: Any) -> float:
    from qcmanybody.v2 import ManyBodyComputer

    return float(ManyBodyComputer.from_manybodyinput(inp).return_result)


def test_streamed_batches_match_threads_exactly(tmp_path: Path) -> None:
    """Every outcome streamed (interval 0): results, store rows, records and events as with the thread executor."""
    distributed = require_module("distributed")
    from qcmb_async._core.store import ResultStore

    register_fakes()
    inp = _fake_input(tmp_path, 0.02, n=5)
    reference = _sequential_energy(inp)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        out: dict[str, Any] = {}
        for name in ("threads", "dask"):
            events: list[Any] = []
            store = tmp_path / f"{name}.sqlite"
            if name == "threads":
                result = await run_manybody(inp, ncores=2, memory=4, executor="threads", store=str(store),
                                            on_event=events.append)
            else:
                async with _cluster(distributed) as cluster, \
                        distributed.Client(cluster, asynchronous=True, set_as_default=False) as client:
                    await client.register_plugin(RegisterFakes())
                    exe = DaskExecutor(client, max_batch=4, deep_batch=4, transport_share=1e-4, stream_interval=0.0)
                    seen: list[str] = []
                    original = exe._on_stream

                    def spy(event: Any, original: Any = original, seen: list[str] = seen) -> None:
                        seen.append(event[1]["batch"])
                        original(event)

                    exe._on_stream = spy  # type: ignore[method-assign]
                    result = await run_manybody(inp, ncores=2, memory=4, executor=exe, store=str(store),
                                                on_event=events.append)
                    out["streamed"] = seen
                    out["kept"] = {topic: [msg for _, msg in evs]
                                   for topic, evs in (await client.get_events()).items() if topic in seen}
            with ResultStore(store, readonly=True) as rs:
                rows = rs.fragments()
            out[name] = {"result": result, "events": events, "rows": rows}
        return out["threads"], out

    threads, both = anyio.run(main)
    dask = both["dask"]
    assert both["streamed"], "no batch sent outcomes back while it ran"
    # The scheduler keeps one topic per batch for reruns: the indices sent, never the results a second time.
    assert set(both["kept"]) == set(both["streamed"])
    for msgs in both["kept"].values():
        # (Dask adds the sending worker's address to a dict event.)
        assert msgs and all(set(m) - {"worker"} == {"batch", "sent"} and all(isinstance(i, int) for i in m["sent"])
                            for m in msgs)
    for run in (threads, dask):
        assert abs(float(run["result"].return_result) - reference) < 1e-12
    assert float(dask["result"].return_result) == float(threads["result"].return_result)

    def rows(run: dict[str, Any], path: Path) -> list[tuple[Any, ...]]:
        with ResultStore(path, readonly=True) as rs:
            return sorted((r["key"], r["label"], r["level"], r["program"], r["status"], len(r["attempts"]),
                           rs.get(r["key"])["return_result"]) for r in run["rows"])

    assert rows(dask, tmp_path / "dask.sqlite") == rows(threads, tmp_path / "threads.sqlite")
    assert len(dask["rows"]) == 15

    def records(run: dict[str, Any]) -> list[tuple[Any, ...]]:
        return sorted((f["label"], f["level"], f["program"], f["status"], f["attempts"], f["cores"])
                      for f in run["result"].extras["qcmb_async"]["fragments"])

    assert records(dask) == records(threads)

    def event_summary(run: dict[str, Any]) -> tuple[Any, ...]:
        kinds = Counter(type(e).__name__ for e in run["events"])
        per_label = Counter((type(e).__name__, e.label) for e in run["events"] if hasattr(e, "label"))
        levels = [(e.level, e.done, e.total) for e in run["events"] if isinstance(e, ev.LevelComplete)]
        return kinds, per_label, levels

    assert event_summary(dask) == event_summary(threads)


def test_worker_killed_mid_batch_loses_no_sent_fragment(tmp_path: Path) -> None:
    """SIGKILL a worker after its batch sent some outcomes back: those are computed once, only the rest again."""
    distributed = require_module("distributed")
    register_fakes()
    inp = _fake_input(tmp_path, 0.4, n=4)
    reference = _sequential_energy(inp)
    (tmp_path / "calls.txt").unlink()  # the sequential reference's calls
    lines = _geometry_keys(inp)
    seen: dict[str, Any] = {"finished": []}

    async def main() -> Any:
        async with _cluster(distributed) as cluster, \
                distributed.Client(cluster, asynchronous=True, set_as_default=False) as client:
            await client.register_plugin(RegisterFakes())
            pids: dict[str, int] = await client.run(os.getpid)
            exe = DaskExecutor(client, max_batch=4, deep_batch=4, transport_share=1e-4, stream_interval=0.1)

            def on_event(event: Any) -> None:
                if not isinstance(event, ev.FragmentFinished):
                    return
                seen["finished"].append(event.label)
                if "killed" in seen:
                    return
                for task in list(exe._streaming.values()):
                    sent = [e for e in task.live if e.outcome is not None]
                    if sent and len(sent) < len(task.live) and all(e.outcome.success for e in sent):
                        worker = sent[0].outcome.worker
                        seen["killed"] = worker
                        seen["finished_at_kill"] = list(seen["finished"])
                        seen["batch"] = [e.job.label for e in task.live]
                        seen["sent"] = [e.job.label for e in sent]
                        os.kill(pids[worker], signal.SIGKILL)
                        return

            return await run_manybody(inp, ncores=2, memory=4, executor=exe, store=str(tmp_path / "s.sqlite"),
                                      on_event=on_event)

    result = anyio.run(main)
    assert "killed" in seen, "no batch was seen mid-way with outcomes sent back"
    assert abs(float(result.return_result) - reference) < 1e-12
    recs = result.extras["qcmb_async"]["fragments"]
    assert len(recs) == 10 and all(f["status"] == "ok" and f["attempts"] == 1 for f in recs)
    assert Counter(seen["finished"]) == Counter({f["label"]: 1 for f in recs})  # each finished once
    calls = Counter((tmp_path / "calls.txt").read_text().split())
    # Every fragment finished before the kill (those of the killed batch that were sent back included): once.
    assert seen["sent"] and all(calls[lines[label]] == 1 for label in seen["finished_at_kill"])
    # The killed worker ran one fragment at a time: at most that one is computed twice, nothing else.
    assert sum(calls.values()) <= len(recs) + 1, calls
    assert all(calls[lines[label]] >= 1 for label in lines)
    unsent = [label for label in seen["batch"] if label not in seen["sent"]]
    assert unsent and all(f["worker"] != seen["killed"] for f in recs if f["label"] in unsent)
