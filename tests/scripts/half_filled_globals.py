"""QCEngine's global config left half-filled by getpass failing; prime_qcengine recovers."""

from __future__ import annotations

import contextlib
import getpass
import json

import qcengine
import qcengine.config as qcng_config


def no_passwd_entry() -> str:
    raise KeyError("getpwuid(): uid not found: 4242")


def main() -> None:
    getpass.getuser = no_passwd_entry  # a uid with no passwd entry and no USER/LOGNAME
    report: dict[str, object] = {}
    with contextlib.suppress(KeyError):
        qcng_config.get_global()
    report["half_filled_keys"] = sorted(qcng_config._global_values or {})
    try:
        qcengine.get_config()
        report["broken_before"] = False
    except KeyError as exc:
        report["broken_before"] = f"KeyError: {exc}"
    from qcmb_async import prime_qcengine, run
    from tests.helpers import mbe_input

    values = prime_qcengine()
    report["username"] = values["username"]
    result = run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2), ncores=2, memory=2)
    report["energy"] = result.return_result
    print(json.dumps(report))


if __name__ == "__main__":
    main()
