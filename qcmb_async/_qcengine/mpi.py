"""Cores as MPI ranks: the QCEngine task config of a fragment whose program takes cores only through MPI.

A program whose registry entry says ``mpi=True`` (NWChem) ignores ``task_config.ncores``: QCEngine
starts it under ``mpiexec`` only when the task config says ``use_mpiexec`` and gives an
``mpiexec_command`` template (``{total_ranks}``, ``{ranks_per_node}``; see
``qcengine.util.create_mpi_invocation``). :func:`mpi_task_config` adds those keys to a fragment's
task config when it has more than one core, on the host where the program runs (the launcher
found there, root or not). QCEngine's NWChem harness then divides the fragment's memory among the
ranks (NWChem's ``memory`` directive is per process), so k ranks never use more than the
fragment's memory allotment.

The launcher: QCEngine's own node description (``qcengine.yaml``'s ``mpiexec_command``) when the
user set one; else ``mpiexec`` on ``PATH``, with OpenMPI's flags where it is OpenMPI:
``--bind-to none`` (OpenMPI binds rank i to core i by default, so two concurrent fragments would
share cores 0..k-1 while others idle), ``--oversubscribe`` (OpenMPI refuses more ranks than the
slots it counts), ``--mca mpi_yield_when_idle 1`` (a rank waiting for a message yields its core
instead of spinning: measured here on a loaded 2-core machine, 6.6 s instead of 11.4 s wall for
the same 2-rank job), and ``--allow-run-as-root`` when running as root (OpenMPI refuses root
otherwise). Everything goes on the command line: ``os.environ`` is never written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Any

from .._logs import get_logger
from ..programs import traits

log = get_logger()
_warned: set[str] = set()

#: Least memory (GiB) one rank is given. NWChem's ``memory`` directive is per process and QCEngine
#: divides the fragment's memory by the ranks; below this, fewer ranks with more cores each
#: (``cores_per_rank``) keep every rank workable. NWChem's own default is 400 MiB per process.
MIN_RANK_MEMORY = 0.25

_lock = threading.Lock()
_launchers: dict[str, str | None] = {}


def _flavour(mpiexec: str) -> str:
    """``"openmpi"``, ``"mpich"`` or ``""`` from ``mpiexec --version``."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    text = (out.stdout + out.stderr).lower()
    if "open mpi" in text or "openrte" in text:
        return "openmpi"
    if "hydra" in text or "mpich" in text or "intel" in text:
        return "mpich"
    return ""


def default_mpiexec_command() -> str | None:
    """QCEngine ``mpiexec_command`` template for one node, or ``None`` when no ``mpiexec`` is on ``PATH``."""
    path = os.environ.get("PATH", "")
    with _lock:
        if path in _launchers:
            return _launchers[path]
    mpiexec = shutil.which("mpiexec")
    command: str | None = None
    if mpiexec is not None:
        kind = _flavour(mpiexec)
        if kind == "openmpi":
            root = " --allow-run-as-root" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
            command = (f"{mpiexec} -n {{total_ranks}} --npernode {{ranks_per_node}} --bind-to none "
                       f"--oversubscribe --mca mpi_yield_when_idle 1{root}")
        elif kind == "mpich":
            command = f"{mpiexec} -n {{total_ranks}} -ppn {{ranks_per_node}}"
        else:
            command = f"{mpiexec} -n {{total_ranks}} -npernode {{ranks_per_node}}"
    with _lock:
        _launchers[path] = command
    return command


def _node_command() -> str | None:
    """The ``mpiexec_command`` of QCEngine's node description for this host, when the user set one."""
    try:
        from qcengine.config import get_node_descriptor

        return get_node_descriptor().mpiexec_command
    except Exception:  # no node description: QCEngine's own default has none
        return None


def mpi_task_config(program: str, task_config: dict[str, Any]) -> dict[str, Any]:
    """``task_config`` with ``ncores`` as MPI ranks when ``program`` takes cores only through MPI.

    Unchanged for programs that are not MPI, for one core, when the caller already decided about
    MPI (``use_mpiexec`` given), or when no launcher is found (then the program runs on one core,
    as before). One rank per core (``cores_per_rank=1``) while each rank keeps at least
    :data:`MIN_RANK_MEMORY` GiB, else fewer ranks with more cores each: QCEngine starts
    ``ncores // cores_per_rank`` ranks and gives each ``memory / ranks``, and our environment seam
    gives each rank ``OMP_NUM_THREADS=cores_per_rank``.
    """
    ncores = int(task_config.get("ncores") or 1)
    if ncores <= 1 or "use_mpiexec" in task_config or not traits(program).mpi:
        return task_config
    command = _node_command() or default_mpiexec_command()
    if command is None:
        if program not in _warned:  # once per program and process, not once per fragment
            _warned.add(program)
            log.warning("no mpiexec on PATH: the program takes cores only as MPI ranks, so it runs on one "
                        "core per fragment; install Open MPI or MPICH, or set mpiexec_command in qcengine.yaml",
                        program=program, ncores=ncores)
        return task_config
    memory = task_config.get("memory")
    ranks = ncores if memory is None else max(1, min(ncores, int(float(memory) / MIN_RANK_MEMORY + 1e-9)))
    if ranks <= 1:
        return task_config
    per_rank = -(-ncores // ranks)  # ceil: never more ranks than the memory allows
    if ncores // per_rank <= 1:
        return task_config
    return {**task_config, "use_mpiexec": True, "mpiexec_command": command, "cores_per_rank": per_rank}
