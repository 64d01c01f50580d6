#!/usr/bin/env bash
# A real one-node Slurm cluster for the Slurm backend's tests: munged, slurmctld and slurmd from
# Debian's packages (slurm-wlm 22.05), with a generated config, state and logs under one folder.
#
#   bash tests/slurm/cluster.sh install       # apt-get install slurm-wlm munge (as root)
#   bash tests/slurm/cluster.sh start DIR     # prints SLURM_CONF=DIR/slurm.conf when the node is idle
#   bash tests/slurm/cluster.sh stop DIR
#
# `make test-slurm` runs all of it around `pytest -m slurm`. Settings (measured, see
# docs/studies.md): no cgroups (linuxproc, task/none), RealMemory set (else --mem is refused),
# credentials that expire in 10 s and a 1 s scheduler (a requeued job starts again in about 11 s),
# and two partitions on the node, `low` and `high`, where a `high` job preempts a `low` one by
# requeueing it after its signal (22.05 needs SlurmctldParameters=preempt_send_user_signal).
# No accounting: the backend reads job states with squeue.
set -euo pipefail

cmd=${1:?usage: cluster.sh install|start DIR|stop DIR}

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

start() {
  local dir
  dir=$(realpath -m "${1:?start needs a folder}")
  mkdir -p "$dir"/state "$dir"/spool "$dir"/log
  local host cpus
  host=$(hostname -s)
  cpus=$(nproc)
  cat > "$dir/slurm.conf" <<CONF
ClusterName=biasbench-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6917
SlurmdPort=6918
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1,sched_interval=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
KillWait=5
ReturnToService=2
MailProg=/bin/true
NodeName=$host CPUs=$cpus RealMemory=2000 State=UNKNOWN
PartitionName=low Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes=$host MaxTime=INFINITE State=UP PriorityTier=10
CONF
  # munged needs its socket folder (no systemd here to make it); the package ships a key.
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
    touch "$dir/munged.started"
  fi
  slurmctld -f "$dir/slurm.conf"
  slurmd -f "$dir/slurm.conf"
  for _ in $(seq 1 60); do
    if SLURM_CONF="$dir/slurm.conf" sinfo -h -o %t 2>/dev/null | grep -q idle; then
      echo "SLURM_CONF=$dir/slurm.conf"
      return
    fi
    sleep 0.5
  done
  echo "the Slurm node did not come up; see $dir/log/" >&2
  exit 1
}

stop() {
  local dir
  dir=$(realpath -m "${1:?stop needs a folder}")
  for daemon in slurmd slurmctld; do
    if [ -f "$dir/$daemon.pid" ]; then kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true; fi
  done
  if [ -f "$dir/munged.started" ]; then
    kill "$(cat /run/munge/munged.pid 2>/dev/null)" 2>/dev/null || true
    rm -f "$dir/munged.started"
  fi
}

case "$cmd" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) echo "unknown command $cmd: install, start DIR or stop DIR" >&2; exit 2 ;;
esac
