#!/usr/bin/env bash
# Start or stop a throw-away single-node Slurm cluster (this host) for tests/test_launch_slurm.py.
#   source .ci/slurm.sh && slurm_start   -> exports DIFFHPO_TEST_SLURM=1 and SLURM_CONF
#   slurm_stop
# Installs Debian's slurm-wlm and munge packages when missing, then runs munged, slurmctld and
# slurmd as root with everything (munge key and socket, slurm.conf, state, spool, logs) in one
# temporary folder, so nothing of the host's own /etc/slurm or /etc/munge is used or changed.
# Choices, for a CI host with a couple of cores:
# * one node (this host, CPUs=$(nproc)) in a partition `debug`; select/cons_tres with
#   OverSubscribe=FORCE:4, so four one-CPU worker jobs run at once even on two cores;
# * no cgroups (proctrack/linuxproc, task/none): containers rarely delegate them;
# * no accounting daemon (slurmdbd needs MariaDB): sacct answers nothing, so diffhpo's launcher
#   follows its jobs with squeue as well (bench/launch.py);
# * KillWait=5: a cancelled job's processes get SIGKILL 5 s after SIGTERM (default 30).
# Failures are reported with one line and leave DIFFHPO_TEST_SLURM unset, so those tests skip
# with a reason.
SLURM_CTLD_PORT=${SLURM_CTLD_PORT:-56817}
SLURM_D_PORT=${SLURM_D_PORT:-56818}

slurm_start() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm: installing Debian's slurm-wlm and munge packages"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
      || { echo "slurm: install failed; slurm tests will skip"; return 0; }
  fi
  if [ "$(id -u)" != 0 ]; then echo "slurm: needs root to run slurmd; slurm tests will skip"; return 0; fi
  SLURM_DIR=$(mktemp -d -t diffhpo-slurm.XXXXXX)
  export SLURM_DIR
  chmod 755 "$SLURM_DIR"
  mkdir -p "$SLURM_DIR/munge" "$SLURM_DIR/state" "$SLURM_DIR/spool"
  chmod 700 "$SLURM_DIR/munge"
  local host; host=$(hostname -s)
  mungekey --create --keyfile="$SLURM_DIR/munge/munge.key" >/dev/null 2>&1 \
    || dd if=/dev/urandom of="$SLURM_DIR/munge/munge.key" bs=1024 count=1 2>/dev/null
  chmod 400 "$SLURM_DIR/munge/munge.key"
  cat >"$SLURM_DIR/slurm.conf" <<EOF
ClusterName=diffhpo-ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$SLURM_CTLD_PORT
SlurmdPort=$SLURM_D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SLURM_DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool/%n
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  export SLURM_CONF="$SLURM_DIR/slurm.conf"
  munged --force --key-file="$SLURM_DIR/munge/munge.key" --socket="$SLURM_DIR/munge/munge.socket" \
      --pid-file="$SLURM_DIR/munge/munged.pid" --log-file="$SLURM_DIR/munge/munged.log" \
      --seed-file="$SLURM_DIR/munge/munged.seed" \
    && slurmctld -f "$SLURM_CONF" \
    && slurmd -f "$SLURM_CONF" \
    || { echo "slurm: could not start munged, slurmctld or slurmd (logs in $SLURM_DIR); slurm tests will skip"
         unset SLURM_CONF; return 0; }
  local i state=""
  for i in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n 1) || state=""
    case "$state" in idle|mix|alloc) break ;; esac
    sleep 1
  done
  case "$state" in
    idle|mix|alloc)
      export DIFFHPO_TEST_SLURM=1
      echo "slurm: node $host ($(nproc) CPUs, partition debug) is $state; SLURM_CONF=$SLURM_CONF" ;;
    *)
      echo "slurm: node $host not idle after 60 s (state '${state:-none}', logs in $SLURM_DIR); slurm tests will skip" ;;
  esac
}

slurm_stop() {
  [ -n "${SLURM_DIR:-}" ] || return 0
  local f
  scancel --full -u "$(id -un)" >/dev/null 2>&1 || true  # jobs a test left behind
  for f in slurmd.pid slurmctld.pid munge/munged.pid; do
    if [ -f "$SLURM_DIR/$f" ]; then kill "$(cat "$SLURM_DIR/$f")" 2>/dev/null || true; fi
  done
  sleep 1
  rm -rf "$SLURM_DIR"
  unset SLURM_DIR SLURM_CONF DIFFHPO_TEST_SLURM
}
