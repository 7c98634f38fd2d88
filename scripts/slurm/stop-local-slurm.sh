#!/usr/bin/env bash
# Stop what scripts/slurm/start-local-slurm.sh started: slurmd, slurmctld (by their PID files), munged.
set -uo pipefail
STATE=${QCMB_SLURM_STATE:-/var/lib/qcmb-slurm}
stop() {  # pidfile
    [[ -s "$1" ]] || return 0
    local pid; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}
scancel --user=root 2>/dev/null || true
stop "$STATE/slurmd.pid"
stop "$STATE/slurmctld.pid"
stop /run/munge/munged.pid
echo "stop-local-slurm: stopped" >&2
