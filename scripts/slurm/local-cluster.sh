#!/usr/bin/env bash
# Local one-node Slurm cluster for the test suite (and for trying the launcher by hand).
#
#   scripts/slurm/local-cluster.sh start    # install if needed, start munged + slurmctld + slurmd
#   scripts/slurm/local-cluster.sh status   # exit 0 if the cluster is up, 1 otherwise
#   scripts/slurm/local-cluster.sh stop     # cancel jobs, stop every daemon this script started
#   scripts/slurm/local-cluster.sh env      # print the export line(s) clients need
#
# Everything (config, munge key and socket, spool, state, logs, pid files) lives in one
# state directory: $STGNN_SLURM_DIR, default /tmp/stgnn-slurm. Nothing under /etc is
# touched apart from the Debian packages themselves; clients find the cluster through
#   export SLURM_CONF=$STGNN_SLURM_DIR/etc/slurm.conf
# The munge socket is private to the state directory (slurm.conf points at it through
# AuthInfo), so a munged already running on the machine is neither used nor disturbed.
#
# Needs root for `start` (apt-get, and slurmd runs as root with SlurmUser=root) unless the
# cluster is already up. Built and tried on Debian 12 (Slurm 22.05, munge 0.5.15) as root
# without systemd; no cgroup plugin is used (proctrack/linuxproc, task/none).
#
# Accounting: off by default (no sacct; squeue/scontrol keep finished jobs for MinJobAge).
# STGNN_SLURM_ACCOUNTING=1 at `start` adds slurmdbd backed by a private MariaDB (unix socket
# in the state directory, no TCP, no grant tables) so that `sacct` works; submitit needs
# sacct to see job states (without it a job killed by Slurm before writing its result makes
# `job.result()` wait forever). Costs the slurmdbd + mariadb-server-core packages and ~3 s.
# The pytest fixture (tests/slurm_cluster.py) starts it with accounting unless STGNN_SLURM_ACCOUNTING=0.
#
# Environment overrides:
#   STGNN_SLURM_DIR            state directory                       (/tmp/stgnn-slurm)
#   STGNN_SLURM_CTLD_PORT      slurmctld port                        (16817)
#   STGNN_SLURM_SLURMD_PORT    slurmd port                           (16818)
#   STGNN_SLURM_PARTITION      partition name                        (debug)
#   STGNN_SLURM_START_TIMEOUT  seconds to wait for the node to be idle (60)
#   STGNN_SLURM_NO_INSTALL=1   never run apt-get (fail if packages are missing)
#   STGNN_SLURM_ACCOUNTING=1   also run slurmdbd + MariaDB so that sacct works     (0)
#   STGNN_SLURM_DBD_PORT       slurmdbd port                         (16819)
set -euo pipefail

STATE_DIR="${STGNN_SLURM_DIR:-/tmp/stgnn-slurm}"
CTLD_PORT="${STGNN_SLURM_CTLD_PORT:-16817}"
SLURMD_PORT="${STGNN_SLURM_SLURMD_PORT:-16818}"
PARTITION="${STGNN_SLURM_PARTITION:-debug}"
START_TIMEOUT="${STGNN_SLURM_START_TIMEOUT:-60}"
CLUSTER_NAME="stgnn"
ACCOUNTING="${STGNN_SLURM_ACCOUNTING:-0}"
DBD_PORT="${STGNN_SLURM_DBD_PORT:-16819}"

ETC_DIR="$STATE_DIR/etc"
CONF="$ETC_DIR/slurm.conf"
LOG_DIR="$STATE_DIR/log"
RUN_DIR="$STATE_DIR/run"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MUNGE_PID="$RUN_DIR/munged.pid"
MUNGE_LOG="$LOG_DIR/munged.log"
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
CTLD_LOG="$LOG_DIR/slurmctld.log"
SLURMD_LOG="$LOG_DIR/slurmd.log"
DB_DIR="$STATE_DIR/mariadb"
DB_SOCKET="$DB_DIR/mysqld.sock"
DB_PID="$RUN_DIR/mariadbd.pid"
DB_LOG="$LOG_DIR/mariadbd.log"
DBD_CONF="$ETC_DIR/slurmdbd.conf"
DBD_PID="$RUN_DIR/slurmdbd.pid"
DBD_LOG="$LOG_DIR/slurmdbd.log"

NODE_NAME="$(hostname -s)"
export SLURM_CONF="$CONF"
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf '[local-cluster] %s\n' "$*" >&2; }

show_logs() {
    local f since="$RUN_DIR/.start-time"
    for f in "$MUNGE_LOG" "$DB_LOG" "$DBD_LOG" "$CTLD_LOG" "$SLURMD_LOG" "$LOG_DIR/munged.stderr" \
        "$LOG_DIR/mariadbd.stderr" "$LOG_DIR/slurmdbd.stderr" "$LOG_DIR/slurmctld.stderr" "$LOG_DIR/slurmd.stderr"; do
        # Only the logs this start wrote to (older ones would only confuse).
        if [[ -s "$f" ]] && { [[ ! -e "$since" ]] || [[ "$f" -nt "$since" ]]; }; then
            printf -- '----- last lines of %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
}

# Daemons started by this invocation ("pidfile:name"): a failed start stops them again so
# that it leaves nothing half-running behind.
STARTED=()

die() {
    printf '[local-cluster] ERROR: %s\n' "$*" >&2
    show_logs
    local entry i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        entry="${STARTED[i]}"
        stop_pid "${entry%%:*}" "${entry#*:}" 10 || true
    done
    ((${#STARTED[@]} == 0)) || log "stopped the daemons this failed start had launched"
    exit 1
}

# proc_is PID NAME: PID is running (not a zombie) and its command is NAME. Zombies matter:
# where PID 1 does not reap orphans (containers, microVMs), a stopped daemon stays in /proc
# as <defunct> under its old name.
proc_is() {
    local pid="$1" name="$2" comm stat
    [[ -n "$pid" ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == "$name" ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}

pid_of() { { tr -dc '0-9' <"$1"; } 2>/dev/null || true; }

# pid_alive PIDFILE NAME: the daemon recorded in PIDFILE is running.
pid_alive() {
    [[ -s "$1" ]] && proc_is "$(pid_of "$1")" "$2"
}

# stop_pid PIDFILE NAME TIMEOUT: SIGTERM, wait, then SIGKILL.
stop_pid() {
    local pidfile="$1" name="$2" timeout="$3" pid i
    pid="$(pid_of "$pidfile")"
    if ! proc_is "$pid" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 5; i++)); do
        proc_is "$pid" "$name" || break
        sleep 0.2
    done
    if proc_is "$pid" "$name"; then
        log "$name (pid $pid) ignored SIGTERM for ${timeout}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

have_cmds() {
    local c
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || return 1; done
}

munge_works() {
    [[ -S "$MUNGE_SOCKET" ]] || return 1
    munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

ctld_responds() {
    # `scontrol ping` exits 0 even when the controller is down on some versions: parse it.
    scontrol ping 2>/dev/null | grep -q 'is UP'
}

node_state() {
    sinfo -h -N -n "$NODE_NAME" -o '%T' 2>/dev/null | head -n 1
}

node_usable() {
    case "$(node_state)" in
        idle | mixed | allocated | completing | idle+* | mixed+* | allocated+* | completing+*) return 0 ;;
        *) return 1 ;;
    esac
}

cluster_up() {
    pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd && ctld_responds && node_usable
}

print_env() {
    echo "export SLURM_CONF=$CONF"
}

# The running (or last written) configuration uses slurmdbd.
accounting_configured() {
    [[ -e "$CONF" ]] && grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$CONF"
}

dbd_responds() {
    timeout 15 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------
install_packages() {
    local cmds=(slurmctld slurmd sinfo squeue sbatch srun scontrol scancel munged munge unmunge)
    local pkgs=(slurmctld slurmd slurm-client munge)
    if [[ "$ACCOUNTING" == 1 ]]; then
        cmds+=(slurmdbd mariadbd sacct sacctmgr)
        pkgs+=(slurmdbd mariadb-server-core)
    fi
    if have_cmds "${cmds[@]}"; then
        return 0
    fi
    if [[ "${STGNN_SLURM_NO_INSTALL:-0}" == "1" ]]; then
        die "Slurm/munge packages are missing and STGNN_SLURM_NO_INSTALL=1"
    fi
    have_cmds apt-get || die "Slurm is not installed and apt-get is not available: install ${pkgs[*]}"
    [[ "$(id -u)" == 0 ]] || die "Slurm is not installed and installing it needs root"
    log "installing ${pkgs[*]} with apt-get"
    # Keep the packages' init scripts from starting daemons with the stock /etc config.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                "${pkgs[@]}"
    } >"$STATE_DIR/apt.log" 2>&1 || rc=$?
    if [[ "$created_policy" == 1 ]]; then rm -f "$policy"; fi
    if [[ "$rc" != 0 ]]; then
        tail -n 30 "$STATE_DIR/apt.log" >&2 || true
        die "apt-get install failed (exit $rc), full log: $STATE_DIR/apt.log"
    fi
    have_cmds "${cmds[@]}" || die "packages installed but some of ${cmds[*]} are not on PATH"
}

# ---------------------------------------------------------------------------------------
start_munge() {
    if pid_alive "$MUNGE_PID" munged && munge_works; then
        return 0
    fi
    stop_pid "$MUNGE_PID" munged 5
    if [[ ! -s "$MUNGE_KEY" ]]; then
        dd if=/dev/urandom of="$MUNGE_KEY.tmp" bs=1024 count=1 status=none
        chmod 400 "$MUNGE_KEY.tmp"
        mv "$MUNGE_KEY.tmp" "$MUNGE_KEY"
    fi
    chown root:root "$MUNGE_KEY"
    chmod 400 "$MUNGE_KEY"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # munged runs as root here: the key and every directory above it belong to root.
    munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" --pid-file="$MUNGE_PID" \
        --log-file="$MUNGE_LOG" --seed-file="$MUNGE_DIR/munged.seed" --num-threads=4 \
        </dev/null >"$LOG_DIR/munged.stderr" 2>&1 9>&- || die "munged failed to start"
    STARTED+=("$MUNGE_PID:munged")
    local i
    for ((i = 0; i < 50; i++)); do
        munge_works && return 0
        sleep 0.2
    done
    die "munged started but munge -n | unmunge fails on $MUNGE_SOCKET"
}

write_conf() {
    local hw cpus mem_total real_mem topo
    # Let slurmd describe the hardware so that the configured node matches what it reports.
    hw="$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=' || true)"
    cpus="$(nproc)"
    topo="CPUs=$cpus"
    if [[ -n "$hw" ]]; then
        topo="$(tr ' ' '\n' <<<"$hw" | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')"
        topo="${topo% }"
    fi
    mem_total="$(free -m | awk '/^Mem:/ {print $2}')"
    # Leave room for the OS and the daemons: 5% with a floor of 256 MB.
    real_mem=$((mem_total - (mem_total / 20 > 256 ? mem_total / 20 : 256)))
    ((real_mem > 0)) || real_mem=1
    local accounting="AccountingStorageType=accounting_storage/none"
    if [[ "$ACCOUNTING" == 1 ]]; then
        accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# With slurmdbd this names the munge socket used to talk to it (AuthInfo is not used there).
AccountingStoragePass=$MUNGE_SOCKET"
        write_dbd_conf
    fi

    cat >"$CONF.tmp" <<EOF
# Generated by scripts/slurm/local-cluster.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ): do not edit.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE_NAME(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT

AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET

StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool/slurmd.%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups: plain process tracking, no task binding, no resource usage gathering.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$accounting
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
LaunchType=launch/slurm

SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Trust the node description below rather than re-checking it against the hardware.
SlurmdParameters=config_overrides

ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
InactiveLimit=0
KillWait=5
OverTimeLimit=0
# Finished jobs stay visible to squeue/scontrol for 5 minutes (sacct only with accounting).
MinJobAge=300
MailProg=/bin/true
TmpFS=/tmp

NodeName=$NODE_NAME NodeAddr=127.0.0.1 NodeHostname=$NODE_NAME $topo RealMemory=$real_mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.tmp" "$CONF"
    # cgroup.conf is read from the directory of slurm.conf. No cgroup plugin is configured,
    # so it is never needed, but an empty one keeps any code path that looks for it quiet.
    [[ -e "$ETC_DIR/cgroup.conf" ]] || printf '# No cgroup plugins are used (see slurm.conf).\n' >"$ETC_DIR/cgroup.conf"
}

write_dbd_conf() {
    (
        umask 077
        cat >"$DBD_CONF.tmp" <<EOF
# Generated by scripts/slurm/local-cluster.sh: do not edit.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$DBD_LOG
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
# "localhost" makes the MariaDB client use the unix socket named by MYSQL_UNIX_PORT.
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    )
    mv "$DBD_CONF.tmp" "$DBD_CONF"
}

# A private MariaDB for slurmdbd: its own datadir, unix socket only (in a root-only
# directory), no grant tables (nothing but root can reach the socket anyway).
start_mariadb() {
    pid_alive "$DB_PID" mariadbd && [[ -S "$DB_SOCKET" ]] && return 0
    stop_pid "$DB_PID" mariadbd 30
    mkdir -p "$DB_DIR/data"
    chmod 700 "$DB_DIR"
    rm -f "$DB_SOCKET"
    local log_size
    log_size="$(stat -c %s "$DB_LOG" 2>/dev/null || echo 0)"
    setsid mariadbd --no-defaults --user=root --datadir="$DB_DIR/data" --socket="$DB_SOCKET" \
        --skip-networking --skip-grant-tables --skip-log-bin --pid-file="$DB_PID" --log-error="$DB_LOG" \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=32M \
        </dev/null >>"$LOG_DIR/mariadbd.stderr" 2>&1 9>&- &
    local deadline=$((SECONDS + 60)) grace=$((SECONDS + 5))
    # (mariadbd writes the same pid there itself once it is up)
    printf '%s\n' "$!" >"$DB_PID"
    STARTED+=("$DB_PID:mariadbd")
    while ((SECONDS < deadline)); do
        # Only this start's lines of the log count (it is appended to).
        [[ -S "$DB_SOCKET" ]] && tail -c "+$((log_size + 1))" "$DB_LOG" 2>/dev/null | grep -q 'ready for connections' &&
            return 0
        # (until it has exec'd, the new process is still named bash or setsid: give it a moment)
        if ((SECONDS >= grace)) && ! pid_alive "$DB_PID" mariadbd; then die "mariadbd exited right after starting"; fi
        sleep 0.2
    done
    die "mariadbd did not open $DB_SOCKET within 60 s"
}

start_slurmdbd() {
    if ! pid_alive "$DBD_PID" slurmdbd; then
        MYSQL_UNIX_PORT="$DB_SOCKET" slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.stderr" 2>&1 9>&- ||
            die "slurmdbd failed to start"
        STARTED+=("$DBD_PID:slurmdbd")
    fi
    local deadline=$((SECONDS + 60)) grace=$((SECONDS + 3))
    until dbd_responds; do
        if ((SECONDS >= deadline)); then die "slurmdbd does not answer sacctmgr after 60 s"; fi
        if ((SECONDS >= grace)) && ! pid_alive "$DBD_PID" slurmdbd; then die "slurmdbd exited right after starting"; fi
        sleep 0.5
    done
    if ! timeout 15 sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
        timeout 30 sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || die "sacctmgr add cluster $CLUSTER_NAME failed"
    fi
}

start_ctld() {
    pid_alive "$CTLD_PID" slurmctld && return 0
    slurmctld -f "$CONF" </dev/null >>"$LOG_DIR/slurmctld.stderr" 2>&1 9>&- || die "slurmctld failed to start"
    STARTED+=("$CTLD_PID:slurmctld")
    local deadline=$((SECONDS + 30)) grace=$((SECONDS + 3))
    while ((SECONDS < deadline)); do
        if pid_alive "$CTLD_PID" slurmctld; then
            ctld_responds && return 0
        elif ((SECONDS >= grace)); then
            die "slurmctld exited right after starting"
        fi
        sleep 0.2
    done
    die "slurmctld does not answer 'scontrol ping' after 30 s"
}

start_slurmd() {
    pid_alive "$SLURMD_PID" slurmd && return 0
    slurmd -f "$CONF" -N "$NODE_NAME" </dev/null >>"$LOG_DIR/slurmd.stderr" 2>&1 9>&- || die "slurmd failed to start"
    STARTED+=("$SLURMD_PID:slurmd")
}

wait_node_idle() {
    local deadline=$((SECONDS + START_TIMEOUT)) state resumed=0
    while ((SECONDS < deadline)); do
        state="$(node_state)"
        case "$state" in
            idle | idle+* | mixed* | allocated* | completing*) return 0 ;;
            down* | drain* | *drain | fail*)
                # Left over from an unclean stop: the node is reachable again, so resume it.
                if ((resumed == 0)) && pid_alive "$SLURMD_PID" slurmd; then
                    scontrol update NodeName="$NODE_NAME" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi
                ;;
        esac
        if ! pid_alive "$SLURMD_PID" slurmd && ((SECONDS > deadline - START_TIMEOUT + 5)); then
            die "slurmd is not running"
        fi
        sleep 0.5
    done
    sinfo -N -l >&2 || true
    die "node $NODE_NAME did not become idle within ${START_TIMEOUT}s (state: ${state:-unknown})"
}

cmd_start() {
    if [[ -e "$CONF" ]] && cluster_up && { ! accounting_configured || dbd_responds; }; then
        log "already running"
        cmd_status >&2 || true
        if [[ "$ACCOUNTING" == 1 ]] && ! accounting_configured; then
            log "note: running without accounting; stop it and start again with STGNN_SLURM_ACCOUNTING=1 for sacct"
        fi
        print_env
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "starting the local cluster needs root (slurmd runs as root with SlurmUser=root)"
    mkdir -p "$STATE_DIR" "$ETC_DIR" "$LOG_DIR" "$RUN_DIR" "$MUNGE_DIR" "$STATE_DIR/state" \
        "$STATE_DIR/spool/slurmd.$NODE_NAME"
    # munged refuses group/world-writable directories on the key/socket path.
    chmod 755 "$STATE_DIR" "$ETC_DIR" "$LOG_DIR" "$RUN_DIR" "$STATE_DIR/spool"
    chmod 700 "$STATE_DIR/state"
    chmod 711 "$MUNGE_DIR"
    touch "$RUN_DIR/.start-time"
    install_packages
    start_munge
    if ! pid_alive "$CTLD_PID" slurmctld; then
        # Daemons that are still running keep the conf they were started with.
        pid_alive "$SLURMD_PID" slurmd && stop_pid "$SLURMD_PID" slurmd 10
        write_conf
    fi
    # Whoever started this cluster, it was not a test session (tests/slurm_cluster.py
    # writes its marker after this script returns).
    rm -f "$STATE_DIR/started-by-pytest"
    if accounting_configured; then
        ACCOUNTING=1
        install_packages
        start_mariadb
        start_slurmdbd
    fi
    start_ctld
    start_slurmd
    wait_node_idle
    local acct="no accounting"
    if accounting_configured; then acct="accounting via slurmdbd"; fi
    log "cluster is up: $(sinfo -V 2>/dev/null), node $NODE_NAME, partition $PARTITION, $acct"
    sinfo >&2 || true
    print_env
}

cmd_stop() {
    if [[ ! -d "$STATE_DIR" ]]; then
        log "nothing to stop ($STATE_DIR does not exist)"
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "stopping the local cluster needs root"
    if pid_alive "$CTLD_PID" slurmctld && ctld_responds; then
        local jobs i
        jobs="$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')"
        if [[ -n "${jobs// /}" ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 60; i++)); do
                [[ -z "$(squeue -h -t PD,R,CG,S,CF -o '%A' 2>/dev/null)" ]] && break
                sleep 0.5
            done
        fi
        # Stops slurmctld and every slurmd it knows about.
        scontrol shutdown >/dev/null 2>&1 || true
    fi
    stop_pid "$SLURMD_PID" slurmd 20
    stop_pid "$CTLD_PID" slurmctld 20
    # Job steps that outlived slurmd (should not happen after scancel) belong to our spool dir.
    local p
    for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
        if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$STATE_DIR" ||
            grep -qz "SLURM_CONF=$CONF" "/proc/$p/environ" 2>/dev/null; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    stop_pid "$DBD_PID" slurmdbd 20
    stop_pid "$DB_PID" mariadbd 60
    if pid_alive "$MUNGE_PID" munged; then
        munged --stop --socket="$MUNGE_SOCKET" >/dev/null 2>&1 || true
        stop_pid "$MUNGE_PID" munged 10
    fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$STATE_DIR/started-by-pytest"
    log "stopped"
}

cmd_status() {
    local ok=0 d daemons=(munged:"$MUNGE_PID")
    if accounting_configured; then daemons+=(mariadbd:"$DB_PID" slurmdbd:"$DBD_PID"); fi
    daemons+=(slurmctld:"$CTLD_PID" slurmd:"$SLURMD_PID")
    for d in "${daemons[@]}"; do
        if pid_alive "${d#*:}" "${d%%:*}"; then
            echo "${d%%:*}: running (pid $(pid_of "${d#*:}"))"
        else
            echo "${d%%:*}: not running"
            ok=1
        fi
    done
    if [[ -e "$CONF" ]] && have_cmds sinfo && ctld_responds; then
        echo "SLURM_CONF=$CONF"
        sinfo || true
        squeue 2>/dev/null || true
        node_usable || ok=1
    else
        echo "slurmctld: not answering"
        ok=1
    fi
    if [[ "$ok" == 0 ]]; then echo "cluster: up"; else echo "cluster: down"; fi
    return "$ok"
}

usage() {
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
}

# Serialize start/stop between concurrent callers (two test sessions, a user and CI...).
take_lock() {
    local lock="$STATE_DIR.lock"
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p "$(dirname "$STATE_DIR")" 2>/dev/null || return 0
    # A user who cannot write the lock cannot start or stop the daemons either: let the
    # command itself report that.
    [[ -w "$lock" || (! -e "$lock" && -w "$(dirname "$lock")") ]] || return 0
    exec 9>>"$lock"
    flock -w "$1" 9 || die "another local-cluster.sh holds $lock for more than $1 s"
}

case "${1:-}" in
    start) take_lock 900 && cmd_start ;;
    stop) take_lock 300 && cmd_stop ;;
    status) cmd_status ;;
    env) print_env ;;
    *) usage ;;
esac
