#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests marked `slurm` (tests/test_slurm.py):
# munge, MariaDB, slurmdbd (sacct needs accounting), slurmctld and slurmd, from Debian's packages,
# started as plain processes (PID 1 need not be systemd). Needs root.
#
#   bash scripts/slurm_local.sh          install what is missing, write the config, start, wait
#   bash scripts/slurm_local.sh stop     stop the daemons it started
#
# The partition `debug` holds the one node `localhost` with this machine's cores and most of its
# memory. Everything it writes outside /etc lives under $SLURM_LOCAL_DIR (default /tmp/slurm-local).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}

log() { echo "[slurm_local] $*" >&2; }

DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"

ours() {  # whether pid $1 is still one of the daemons (a pid from an old list may be reused)
    local name
    name=$(cat "/proc/$1/comm" 2>/dev/null) || return 1
    case " $DAEMONS " in *" $name "*) return 0 ;; *) return 1 ;; esac
}

PIDFILES="/run/munge/munged.pid /run/mysqld/mariadb.pid $DIR/slurmdbd.pid $DIR/slurmctld.pid $DIR/slurmd.pid"

running() {  # the daemons' pids that are alive
    local f pid
    for f in $PIDFILES; do
        pid=$(cat "$f" 2>/dev/null) || continue
        ours "$pid" && echo "$pid"
    done
    return 0
}

stop() {
    local pids
    pids=$(running)
    [ -n "$pids" ] || return 0
    kill $pids 2>/dev/null || true
    for _ in $(seq 40); do [ -z "$(running)" ] && return 0; sleep 0.25; done
    kill -9 $(running) 2>/dev/null || true
}

if [ "${1:-start}" = stop ]; then
    stop
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "scripts/slurm_local.sh: needs root (it installs packages and starts daemons)" >&2
    exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
    || ! command -v mariadbd >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm munge slurmdbd mariadb-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
fi

stop  # a cluster this script started before
rm -f $PIDFILES
mkdir -p "$DIR"/{spool/ctld,spool/d,log,db} /run/munge /run/mysqld /etc/slurm
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld "$DIR/db"
[ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || /usr/sbin/create-munge-key -f; }
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key

runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid --force
for _ in $(seq 20); do [ -s /run/munge/munged.pid ] && break; sleep 0.25; done

# MariaDB in its own data dir, on loopback only.
if [ ! -d "$DIR/db/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$DIR/db" --auth-root-authentication-method=socket \
        >/dev/null
fi
runuser -u mysql -- /usr/sbin/mariadbd --datadir="$DIR/db" --bind-address=127.0.0.1 \
    --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mariadb.pid \
    > "$DIR/log/mariadb.log" 2>&1 &
for _ in $(seq 60); do mysql -u root -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
mysql -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=$PASS
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
CONF
chmod 600 /etc/slurm/slurmdbd.conf
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
MailProg=/bin/true
SlurmdSpoolDir=$DIR/spool/d
StateSaveLocation=$DIR/spool/ctld
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
# Quick turnaround for tests: a job past its limit is killed 10 s after its SIGTERM, and the
# controller checks time limits often.
KillWait=10
OverTimeLimit=0
MinJobAge=300
NodeName=localhost CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

/usr/sbin/slurmdbd
for _ in $(seq 60); do [ -s "$DIR/slurmdbd.pid" ] && break; sleep 0.5; done
for _ in $(seq 60); do sacctmgr -i show cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -i add cluster local >/dev/null 2>&1 || true
sacctmgr -i add account default >/dev/null 2>&1 || true
sacctmgr -i add user root account=default >/dev/null 2>&1 || true

/usr/sbin/slurmctld
/usr/sbin/slurmd -N localhost  # the node's name is not this host's name
for _ in $(seq 60); do [ -s "$DIR/slurmctld.pid" ] && [ -s "$DIR/slurmd.pid" ] && break; sleep 0.5; done

for _ in $(seq 120); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        log "up: $(sinfo -h -o '%P %D %T %c CPUs')"
        exit 0
    fi
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    sleep 0.5
done
log "the node did not come up; logs in $DIR/log"
sinfo >&2 || true
exit 1
