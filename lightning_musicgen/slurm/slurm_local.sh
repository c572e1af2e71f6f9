#!/usr/bin/env bash
# A real single-node SLURM on localhost (2 CPUs) for the tests and for trying `submit`:
# installs Debian's munge + slurmctld + slurmd (+ client tools), writes a minimal slurm.conf
# and starts the three daemons without systemd. Idempotent: returns at once when the
# cluster already answers. Needs root (apt-get, /etc/slurm, /run/munge).
set -euo pipefail

CPUS="${SLURM_LOCAL_CPUS:-2}"
MEM_MB="${SLURM_LOCAL_MEM_MB:-8000}"
CONF=/etc/slurm/slurm.conf

if command -v sinfo >/dev/null 2>&1 && sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|alloc'; then
    echo "slurm-up: local SLURM already running ($(sinfo -h -o '%P %D %T' | head -1))"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "slurm-up: needs root to install and start munge/slurmctld/slurmd" >&2
    exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null; then
    echo "slurm-up: installing slurm-wlm, slurmctld, slurmd, munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmctld slurmd slurm-client munge >/dev/null
fi

# munge: one shared key on a single host is all authentication needs.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 0700 /etc/munge /var/lib/munge /var/log/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if id munge >/dev/null 2>&1; then
        su -s /bin/sh munge -c "/usr/sbin/munged --force" || /usr/sbin/munged --force
    else
        /usr/sbin/munged --force
    fi
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

NODE="$(hostname -s)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$CONF" <<EOF
# written by lightning_musicgen/slurm/slurm_local.sh: a single-node test cluster
ClusterName=localcluster
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SchedulerParameters=defer_batch
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF

pgrep -x slurmctld >/dev/null || slurmctld
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 100); do
    state="$(sinfo -h -o '%T' 2>/dev/null | head -1)"
    case "$state" in idle*|mixed*|alloc*) break ;; esac
    sleep 0.2
done
scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
sinfo
echo "slurm-up: local SLURM running (node $NODE, $CPUS CPUs)"
