"""Scheduler behaviour on the FAKE sleep harness: limits, level order, barrier, events."""

from __future__ import annotations

import anyio
import pytest

from qcmb_async import events, run_manybody
from tests.fakes import CALLS
from tests.helpers import intervals, max_overlap, mbe_input, waters

pytestmark = pytest.mark.asyncio


def fake_input(n: int = 4, max_nbody: int = 2, sleep: float = 0.1, **kw: object):
    return mbe_input("qcmb-fake-sleep", "fake", "none", molecule=waters(n), bsse="nocp", max_nbody=max_nbody,
                     keywords={"sleep": sleep, **kw})


async def test_never_more_fragments_than_cores() -> None:
    result = await run_manybody(fake_input(4, 2, 0.1), ncores=2, memory=2)
    spans = intervals(result)
    assert len(spans) == 4 + 6
    assert max_overlap(spans) == 2  # both cores used, never a third fragment
    assert result.extras["qcmb_async"]["peak_cores"] == 2


async def test_fragment_waits_for_memory() -> None:
    # Four cores but memory for only two fragments at a time.
    result = await run_manybody(fake_input(4, 2, 0.1), ncores=4, memory=2, fragment_memory=1)
    assert max_overlap(intervals(result)) == 2
    assert result.extras["qcmb_async"]["peak_memory"] <= 2 + 1e-9


async def test_task_config_is_complete_and_per_fragment() -> None:
    CALLS.clear()
    await run_manybody(fake_input(3, 1, 0.01), ncores=3, memory=6, fragment_memory=1.5)
    assert {c["ncores"] for c in CALLS} == {1}
    assert {c["memory"] for c in CALLS} == {1.5}


async def test_no_barrier_lets_next_level_fill_idle_cores() -> None:
    # 3 monomers on 2 cores: the third monomer runs alone unless a dimer fills the other core.
    result = await run_manybody(fake_input(3, 2, 0.2), ncores=2, memory=2)
    frags = result.extras["qcmb_async"]["fragments"]
    last_monomer_end = max(f["end"] for f in frags if f["level"] == 1)
    first_dimer_start = min(f["start"] for f in frags if f["level"] == 2)
    assert first_dimer_start < last_monomer_end - 0.1


async def test_level_barrier_waits_for_the_level() -> None:
    result = await run_manybody(fake_input(3, 2, 0.2), ncores=2, memory=2, level_barrier=True)
    frags = result.extras["qcmb_async"]["fragments"]
    last_monomer_end = max(f["end"] for f in frags if f["level"] == 1)
    first_dimer_start = min(f["start"] for f in frags if f["level"] == 2)
    assert first_dimer_start >= last_monomer_end


async def test_largest_fragments_first_across_levels() -> None:
    # Longest-processing-time first: trimers, then dimers, then monomers (sizes 9, 6, 3 atoms).
    result = await run_manybody(fake_input(4, 3, 0.02), ncores=1, memory=1)
    frags = sorted(result.extras["qcmb_async"]["fragments"], key=lambda f: f["start"])
    levels = [f["level"] for f in frags]
    assert levels == sorted(levels, reverse=True)


async def test_fifo_order_keeps_qcmanybodys_order() -> None:
    from qcmb_async._core.options import make_options
    from qcmb_async._core.plan import make_plan
    from qcmb_async._core.scheduler import Scheduler
    from qcmb_async.executors.threads import ThreadExecutor

    inp = fake_input(4, 3, 0.005)
    plan = make_plan(inp)
    async with ThreadExecutor() as exe:
        outcome = await Scheduler(plan, make_options(ncores=1, memory=1, order="fifo"), exe, run_id="fifo").run()
    started = [r.label for r in sorted(outcome.records, key=lambda r: r.start)]
    assert started == [f.label for f in plan.fragments]


async def test_events_in_order_and_counted() -> None:
    seen: list[object] = []
    await run_manybody(fake_input(3, 2, 0.01), ncores=2, memory=2, on_event=seen.append)
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    assert kinds.count("FragmentStarted") == kinds.count("FragmentFinished") == 6
    done = [e for e in seen if isinstance(e, events.LevelComplete)]
    assert [e.level for e in done] == [1, 2]
    for ev in seen:
        if isinstance(ev, events.FragmentFinished):
            started = [i for i, e in enumerate(seen) if isinstance(e, events.FragmentStarted) and e.label == ev.label]
            assert started and started[0] < seen.index(ev)


async def test_async_event_callback() -> None:
    got: list[object] = []

    async def cb(ev: object) -> None:
        await anyio.sleep(0)
        got.append(ev)

    await run_manybody(fake_input(2, 2, 0.01), ncores=2, memory=2, on_event=cb)
    assert sum(isinstance(e, events.FragmentFinished) for e in got) == 3


async def test_open_run_streams_events_and_partial_results() -> None:
    from qcmb_async import open_run

    seen: list[object] = []
    async with open_run(fake_input(3, 3, 0.01), ncores=2, memory=2) as handle:
        async for event in handle:
            seen.append(event)
        result = await handle.result()
    levels = [e for e in seen if isinstance(e, events.LevelComplete)]
    assert [e.level for e in levels] == [1, 2, 3]
    # MBE(1) and MBE(2) arrive while the run goes on; the final result is the return value.
    mbe2 = levels[1].partial_result
    assert mbe2 is not None and levels[2].partial_result is None
    assert mbe2.properties.nocp_corrected_total_energy_through_2_body == pytest.approx(
        result.properties.nocp_corrected_total_energy_through_2_body, abs=1e-12)
    assert isinstance(seen[-1], events.RunFinished)


async def test_open_run_reraises_errors() -> None:
    from qcmb_async import FragmentError, open_run

    async with open_run(fake_input(3, 2, 0.01, fail_real_atoms=[6]), ncores=2, memory=2) as handle:
        kinds = [type(e).__name__ async for e in handle]
        with pytest.raises(FragmentError):
            await handle.result()
    assert "FragmentFailed" in kinds


async def test_open_run_error_leaving_the_block_is_not_wrapped() -> None:
    """The quickstart pattern: the error of result() leaves the block as itself, not as an ExceptionGroup."""
    from qcmb_async import FragmentError, InputError, open_run

    with pytest.raises(FragmentError):
        async with open_run(fake_input(3, 2, 0.01, fail_real_atoms=[6]), ncores=2, memory=2) as handle:
            _ = [e async for e in handle]
            await handle.result()
    with pytest.raises(InputError, match="retries must be a whole number"):
        async with open_run(fake_input(3, 2, 0.01), ncores=2, memory=2, retries=-1) as handle:
            await handle.result()


async def test_retry_policy_retries_only_transient_errors_with_capped_backoff() -> None:
    from qcmb_async._core.contract import ErrorType
    from qcmb_async._core.outcome import RetryPolicy

    policy = RetryPolicy(retries=3, base=0.5, cap=1.5)
    for etype in (ErrorType.TIMEOUT, ErrorType.WORKER_DIED, "random_error", "RandomError", ErrorType.KILLED_WORKER):
        delays = [policy.delay(etype, attempt) for attempt in (1, 2, 3)]
        # 0.5 * 2**(attempt-1), capped at 1.5, jittered to 50-100 %.
        for delay, full in zip(delays, (0.5, 1.0, 1.5), strict=True):
            assert delay is not None and full / 2 <= delay <= full
        assert policy.delay(etype, 4) is None, "a fourth retry with retries=3"
    for etype in ("input_error", "convergence_error", "UnknownError", None):
        assert policy.delay(etype, 1) is None, f"{etype} is not transient"
    assert RetryPolicy(retries=0).delay(ErrorType.TIMEOUT, 1) is None
