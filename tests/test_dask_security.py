"""Dask with TLS (the way docs/executors.md tells users to run it across machines)."""

from __future__ import annotations

import pytest

from qcmb_async import InputError, run
from tests.helpers import mbe_input, require_module, require_program, waters


def test_run_on_a_tls_cluster_through_a_client_with_security() -> None:
    require_program("mopac")
    distributed = require_module("distributed")
    require_module("cryptography")  # Security.temporary() makes its certificates with it
    from distributed.security import Security

    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(3))
    reference = run(inp, store=None, ncores=1, executor="threads")
    sec = Security.temporary()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tls://",
                                  host="127.0.0.1", dashboard_address=None, security=sec,
                                  resources={"cores": 2, "memory": 2}) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with distributed.Client(cluster, security=sec) as client:
            result = run(inp, store=None, scheduler=client)
        assert result.extras["qcmb_async"]["executor"] == "dask"
        assert result.return_result == pytest.approx(reference.return_result, abs=1e-9)
        # Without the credentials the TLS scheduler is unreachable: nothing talks to it in the clear.
        plain = cluster.scheduler_address.replace("tls://", "tcp://")
        # ... and the error says so (issue 21: it used to say "start one with dask scheduler").
        with pytest.raises(InputError, match="accepted the connection and then reset it: it is most likely a TLS "
                                             "scheduler"):
            run(inp, store=None, scheduler=plain)
