#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for running and testing `hydra/launcher=slurm` sweeps
# without a real cluster. Debian/Ubuntu only; run as root. Safe to run again: it installs only what
# is missing, rewrites the configuration only when it changed, restarts only daemons that are down
# or stale, and returns once the node accepts jobs (state idle or mixed).
#
#   sudo scripts/slurm_local.sh          # bring the cluster up (about a minute the first time)
#   scripts/slurm_local.sh --stop        # stop the daemons this script started
#
# The node offers this machine's CPUs and most of its memory; CPUs and memory are consumable, so
# several one-CPU jobs run side by side. No accounting database: `sacct` is unavailable, which
# submitit tolerates (it then reads job completion from its own result files).
set -euo pipefail

CONF_DIR=/etc/slurm
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
WAIT_S=${SLURM_LOCAL_WAIT_S:-90}

say() { echo "[slurm_local] $*"; }
die() {
    echo "[slurm_local] ERROR: $*" >&2
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
        [[ -f $f ]] && { echo "--- last lines of $f ---" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # the daemon whose pid file this script configured, and only that process
    local pidfile=$1
    if pid_alive "$pidfile"; then
        local pid
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$pidfile"
}

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons): sudo $0"

if [[ ${1:-} == --stop ]]; then
    stop_daemon "$SLURMD_PID"
    stop_daemon "$CTLD_PID"
    say "slurmd and slurmctld stopped (munged left running)"
    exit 0
fi

# 1. Packages ------------------------------------------------------------------------------------
missing=()
for pkg in munge slurmctld slurmd slurm-client; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian/Ubuntu only"
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed (no access to the Debian mirrors?)"
    # policy-rc.d: package scripts must not start daemons themselves (no systemd in containers,
    # and we start them below with our own configuration). An existing policy is left alone.
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    apt_ok=1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || apt_ok=0
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
    ((apt_ok)) || die "apt-get install ${missing[*]} failed"
else
    say "packages already installed"
fi

# 2. Munge (authentication between Slurm's daemons and clients) ----------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
else
    say "munged already running"
fi

# 3. Configuration for this machine --------------------------------------------------------------
host=$(hostname -s)
getent hosts "$host" >/dev/null || die "hostname $host does not resolve; add it to /etc/hosts"
# `slurmd -C` reports this machine's topology and memory as slurmd sees them.
hw=$(slurmd -C | head -n 1) || die "slurmd -C failed"
field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
[[ -n $cpus && -n $mem ]] || die "cannot parse 'slurmd -C' output: $hw"
mem=$((mem * 95 / 100))  # leave headroom so the node is never drained for low memory
mkdir -p "$CONF_DIR" "$SPOOL_CTLD" "$SPOOL_D" "$LOG_DIR"
new_conf=$(mktemp)
cat >"$new_conf" <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster on $host.
ClusterName=adalfl-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups (containers rarely allow them) and no accounting database.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
# CPUs and memory are consumable: several small jobs share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem / cpus))
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$host CPUs=$cpus Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
restart=0
if ! cmp -s "$new_conf" "$CONF_DIR/slurm.conf"; then
    say "writing $CONF_DIR/slurm.conf ($cpus CPUs, ${mem} MB)"
    install -m 0644 "$new_conf" "$CONF_DIR/slurm.conf"
    restart=1
fi
rm -f "$new_conf"

# 4. Daemons --------------------------------------------------------------------------------------
if ((restart)); then
    stop_daemon "$SLURMD_PID"
    stop_daemon "$CTLD_PID"
fi
ctld_up() { scontrol ping 2>/dev/null | grep -q "is UP"; }
if ! pid_alive "$CTLD_PID" && ! ctld_up; then
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start"
fi
for _ in $(seq 50); do ctld_up && break; sleep 0.2; done
ctld_up || die "slurmctld does not answer 'scontrol ping'"
if ! pid_alive "$SLURMD_PID" && ! pgrep -x slurmd >/dev/null; then
    say "starting slurmd"
    slurmd || die "slurmd did not start"
fi

# 5. Wait until the node takes jobs ---------------------------------------------------------------
say "waiting (up to ${WAIT_S}s) for node $host to become idle"
deadline=$((SECONDS + WAIT_S))
state=""
while ((SECONDS < deadline)); do
    state=$(sinfo -h -N -n "$host" -o %t 2>/dev/null | head -n 1 | tr -d '*~#!%$@^-')
    case $state in
        idle | mix | mixed | alloc | allocated) break ;;
        drain | drained | draining | down | fail | failing)
            scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
case $state in
    idle | mix | mixed | alloc | allocated) ;;
    *) die "node $host is '${state:-unknown}' after ${WAIT_S}s ($(sinfo -h -N -o '%N %t %E' 2>&1))" ;;
esac
say "cluster up: $(sinfo -h -o '%P %a %D %t %c CPUs %m MB')"
