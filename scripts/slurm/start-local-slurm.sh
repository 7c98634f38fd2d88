#!/usr/bin/env bash
# Start a single-node SLURM on this machine (for tests and CI), idempotently.
#
# Needs root and Debian's packages: munge slurmctld slurmd slurm-client.
# Writes a munge key (once), starts munged as the munge user, writes /etc/slurm/slurm.conf for this
# host (CPUs from nproc, RealMemory from /proc/meminfo), starts slurmctld and slurmd, and waits until
# `sinfo` shows the node idle. Running it again while SLURM answers does nothing.
# Stop with scripts/slurm/stop-local-slurm.sh. PIDs and logs go to $QCMB_SLURM_STATE
# (default /var/lib/qcmb-slurm).
set -euo pipefail

STATE=${QCMB_SLURM_STATE:-/var/lib/qcmb-slurm}
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)
WAIT=${QCMB_SLURM_WAIT:-60}

say() { echo "start-local-slurm: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    say "must run as root (it starts munged and the SLURM daemons)"; exit 1
fi
for exe in munged slurmctld slurmd sinfo scontrol; do
    command -v "$exe" > /dev/null || { say "$exe not found: apt-get install munge slurmctld slurmd slurm-client"; exit 1; }
done

node_idle() { sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; }

if node_idle; then
    say "SLURM is already running ($HOST: $(sinfo -h -N -n "$HOST" -o '%t'))"; exit 0
fi

mkdir -p "$STATE" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm
chmod 0755 "$STATE"

# --- munge: a generated key (kept across restarts), munged as user munge.
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]] || [[ $(stat -c %s /etc/munge/munge.key) -lt 32 ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge > /dev/null 2>&1; then
    su -s /bin/sh munge -c /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge > /dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge > /dev/null || { say "munged did not start"; exit 1; }
fi

# --- slurm.conf for this host.
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
cat > "$CONF.tmp" <<CONF
# Written by scripts/slurm/start-local-slurm.sh: a single-node SLURM for tests.
ClusterName=qcmb
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
MinJobAge=60
InactiveLimit=0
Waittime=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.tmp" "$CONF"

alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive "$STATE/slurmctld.pid" || slurmctld
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
alive "$STATE/slurmd.pid" || slurmd

deadline=$((SECONDS + WAIT))
until node_idle; do
    state=$(sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null || true)
    if [[ $state == down* || $state == drain* ]]; then
        scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
    fi
    if (( SECONDS > deadline )); then
        say "node $HOST not idle after ${WAIT}s (state: ${state:-none}); see /var/log/slurm/"; exit 1
    fi
    sleep 0.5
done
say "SLURM up: $HOST CPUs=$CPUS RealMemory=${MEM_MB}MB ($(sinfo -h -N -n "$HOST" -o '%t'))"
