"""Compact results: what a Dask worker sends back instead of the whole AtomicResult, checked against QCEngine's own."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import anyio
import pytest

from qcmb_async import plan_manybody, run, run_manybody
from qcmb_async._core.compact import CompactResult
from qcmb_async.executors.dask import DaskExecutor
from tests.helpers import mbe_input, require_module, require_program, waters


def _qcengine_result(driver: str = "energy") -> Any:
    """One MOPAC fragment computed by QCEngine directly (not through qcmb_async's executors)."""
    import qcengine

    plan = plan_manybody(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2),
                                   driver=driver))
    frag = max(plan.fragments, key=lambda f: f.level)
    result = qcengine.compute(plan.materialise(frag).atomic_input, "mopac", raise_error=True, return_version=2)
    assert result.success
    return result


def test_compact_result_carries_qcengine_numbers_and_json_exactly() -> None:
    require_program("mopac")
    result = _qcengine_result()
    compact = pickle.loads(pickle.dumps(CompactResult.of(result, with_json=True)))  # as it crosses from a worker
    assert compact.properties == {"energy": float(result.properties.return_energy)}
    assert compact.json == result.model_dump_json()  # what the store wrote of the whole model before
    assert compact.model().model_dump_json() == result.model_dump_json()
    assert len(pickle.dumps(CompactResult.of(result, with_json=False))) < len(pickle.dumps(result)) / 20
    bare = CompactResult.of(result, with_json=False)
    assert bare.json is None
    with pytest.raises(ValueError, match="without the result's JSON"):
        bare.model()


def test_compact_gradient_from_return_result_like_qcmanybody() -> None:
    """MOPAC leaves properties.return_gradient empty; QCManyBody takes the driver's quantity from return_result."""
    require_program("mopac")
    import numpy as np

    result = _qcengine_result("gradient")
    compact = CompactResult.of(result, with_json=False)
    np.testing.assert_array_equal(np.asarray(compact.properties["gradient"]), np.asarray(result.return_result))
    assert compact.properties["energy"] == float(result.properties.return_energy)


def _stored(path: Path) -> dict[str, dict[str, Any]]:
    from qcmb_async._core.store import ResultStore

    with ResultStore(path, readonly=True) as rs:
        keys = [row["key"] for row in rs.fragments()]
        return rs.get_many(keys)


def test_dask_store_holds_what_the_threads_path_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per content key, the Dask run's stored result (JSON made on the worker) equals the threads run's."""
    require_program("mopac")
    distributed = require_module("distributed")
    from qcmb_async._core import scheduler

    kinds: list[str] = []
    original = scheduler._store_put

    def spy(store: Any, frag: Any, key: str, result: Any, *args: Any) -> Any:
        kinds.append(type(result).__name__)
        return original(store, frag, key, result, *args)

    batch_original = scheduler._store_put_batch

    def batch_spy(store: Any, items: list[Any], *args: Any) -> Any:  # results committed together (group commit)
        kinds.extend(type(result).__name__ for _, _, result, _ in items)
        return batch_original(store, items, *args)

    monkeypatch.setattr(scheduler, "_store_put", spy)
    monkeypatch.setattr(scheduler, "_store_put_batch", batch_spy)
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(4))
    reference = run(inp, executor="threads", ncores=2, store=str(tmp_path / "threads.sqlite"))
    ours = tmp_path / "dask.sqlite"

    async def main() -> Any:
        async with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                            dashboard_address=":0", resources={"cores": 1, "memory": 2},
                                            asynchronous=True) as cluster, \
                distributed.Client(cluster, asynchronous=True, set_as_default=False) as client:
            return await run_manybody(inp, executor=DaskExecutor(client, max_batch=4, transport_share=1e-4),
                                      store=str(ours))

    result = anyio.run(main)
    assert float(result.return_result) == float(reference.return_result)
    assert kinds.count("AtomicResult") == len(kinds) // 2 and kinds.count("CompactResult") == len(kinds) // 2
    a, b = _stored(tmp_path / "threads.sqlite"), _stored(ours)
    assert a.keys() == b.keys() and len(b) == len(result.extras["qcmb_async"]["fragments"])
    for key in a:
        # The program's output text and run timings differ between any two runs; the rest is the same result.
        for field in ("input_data", "molecule", "properties", "return_result", "success", "schema_name"):
            assert b[key][field] == a[key][field], (key, field)
        assert b[key]["stdout"] and "PM7" in b[key]["stdout"]
