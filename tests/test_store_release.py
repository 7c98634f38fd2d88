"""A fragment's cores are free for the next fragment while its result is being committed to the store.

One core, two fragments. The store's ``put`` of the first result does not return until the second
fragment has started: if the scheduler held the first fragment's core until the commit returned,
the second could never start and the put would give up (bounded wait, then a failure the test sees).
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from qcmb_async._core.options import make_options
from qcmb_async._core.plan import Fragment
from qcmb_async._core.scheduler import Scheduler
from qcmb_async.executors.simulated import SimulatedExecutor
from qcmb_async.simulate import SimulatedPlan

#: Upper bound on the wait in the failure case only (the passing case returns as soon as the event is set).
GIVE_UP = 30.0


class GatedStore:
    """A FragmentStore whose first ``put`` waits until ``second_started`` is set (from another thread)."""

    def __init__(self) -> None:
        self.second_started = threading.Event()
        self.rows: dict[str, dict[str, Any]] = {}
        self.first_put_waited: bool | None = None

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return {}

    def put(self, key: str, **fields: Any) -> None:
        if self.first_put_waited is None:
            self.first_put_waited = self.second_started.wait(GIVE_UP)
        self.rows[key] = fields

    def record_failure(self, key: str, **fields: Any) -> None:
        raise AssertionError(f"no fragment should fail: {key} {fields}")


class Watching(SimulatedExecutor):
    """Tells the store when the second fragment starts."""

    def __init__(self, store: GatedStore, durations: dict[str, float]) -> None:
        super().__init__(durations)
        self.store = store
        self.started: list[str] = []

    async def run(self, job: Any) -> Any:
        self.started.append(job.label)
        if len(self.started) == 2:
            self.store.second_started.set()
        return await super().run(job)


@pytest.mark.asyncio
async def test_next_fragment_starts_while_the_previous_result_is_committed() -> None:
    frags = [Fragment(label, 1, "(auto)", "pyscf", (i,), (i,), 10.0, 10.0**3.5, "pyscf:(auto)")
             for i, label in enumerate(("a", "b"), start=1)]
    plan = SimulatedPlan(input=None, computer=None, fragments=frags, specs={}, inline=True)
    store = GatedStore()
    executor = Watching(store, {"a": 0.0, "b": 0.0})
    options = make_options(ncores=1, memory=2.0, fragment_ncores=1, fragment_memory=1.0)
    with anyio.fail_after(2 * GIVE_UP):
        async with executor:
            outcome = await Scheduler(plan, options, executor, run_id="r", store=store).run()
    assert store.first_put_waited is True, "the second fragment did not start until the first result was committed"
    assert sorted(executor.started) == ["a", "b"]
    assert set(outcome.results) == {"a", "b"}
    assert sorted(row["label"] for row in store.rows.values()) == ["a", "b"]  # both committed
    assert all(r.status == "ok" for r in outcome.records)
