#!/usr/bin/env bash
# The side-by-side benchmark (issue 10): one command, one run, every system
# on the same input files and the same backing store (a tmpfs by default).
# Each system is brought up, measured and torn down before the next, so they
# never compete for CPU:
#   bindfs     FUSE passthrough of a local directory (--multithreaded
#              -o big_writes): the FUSE ceiling
#   gocryptfs  one encrypted node (-plaintextnames, password file)
#   moosefs    Debian's MooseFS: mfsmaster + 3 mfschunkserver inside a private
#              network namespace (the chunkserver refuses a 127.x master),
#              mfsmount from outside over a veth pair; goal 3
#   glusterfs  GlusterFS replica 3: glusterd + 3 bricks in the same kind of
#              namespace (gluster refuses 127.x/localhost bricks), mounted
#              from outside with mount -t glusterfs
#   p2pfs      3 peers, R = 3, by scripts/up.sh (own state dir and ports)
# Workloads ("cold": the system's mount unmounted and mounted again, then
# `echo 3 > /proc/sys/vm/drop_caches`):
#   1. write SIZE MiB of random bytes: dd bs=1M conv=fsync (MB/s)
#   2. cold sequential read of that file: dd bs=1M of=/dev/null (MB/s)
#   3. cold 4 KiB random reads of it: fio psync, QD1, FIO_SECONDS (IOPS)
#   4. tar x of FILES files of 64 B-64 KiB, 100 per directory (fixed seed),
#      then sync -f of the mount (files/s)
#   5. cold find -ls of that tree (seconds)
#   6. cold cat of every file of it (files/s)
# plus each system's CPU time per GiB written (1) and read (2): utime + stime
# of its own processes (/proc/PID/stat, before and after), and the mount
# process's peak RSS (VmHWM) right after the write. What was read back is
# compared with the input (untimed). Prints a table with each p2pfs figure's
# ratio to the best of MooseFS and GlusterFS, and writes the table, the
# machine, the versions, the settings and issue 10's targets to a markdown
# report. A full run takes about 10 minutes.
#
# Usage: scripts/bench.sh      (as root; needs the systems' Debian packages:
#        apt-get install -y bindfs gocryptfs moosefs-master moosefs-chunkserver
#        moosefs-client glusterfs-server fio; and built p2pfs binaries)
# Environment (defaults in brackets):
#   P2PFS_BENCH_SYSTEMS      systems to run, in this order
#                            ["bindfs gocryptfs moosefs glusterfs p2pfs"]
#   P2PFS_BENCH_SIZE_MIB     size of the big file [1024]
#   P2PFS_BENCH_FILES        number of small files [5000]
#   P2PFS_BENCH_FIO_SECONDS  run time of the random reads [20]
#   P2PFS_BENCH_DIR          parent of the scratch dir, which is every
#                            system's backing store [/dev/shm]
#   P2PFS_BENCH_OUT          the markdown report, "-" for none [docs/PERFORMANCE.md]
#   P2PFS_BENCH_NET          first three octets of the /30 between the host
#                            (.1) and the MooseFS/GlusterFS namespace (.2) [10.213.0]
#   P2PFS_BIN                dirsvc, peerd and fs-client to measure; copied at
#                            the start (a rebuild during the run changes
#                            nothing), never built [<repo>/target/release]
#   P2PFS_PORT               base port of the p2pfs cluster [7800]
# Everything (mounts, processes, the namespace, GlusterFS's files under
# /var/lib/glusterd, /var/log/glusterfs and /run/gluster that the run made)
# is removed on any exit, Ctrl-C included.
set -euo pipefail

die() { echo "bench.sh: $*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,53p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
[[ $# -eq 0 ]] || die "takes no arguments (settings are environment variables; see --help)"
[[ $(id -u) -eq 0 ]] || die "run as root (mounts, network namespaces, drop_caches)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

ALL_SYSTEMS="bindfs gocryptfs moosefs glusterfs p2pfs"
read -r -a SYSTEMS <<<"${P2PFS_BENCH_SYSTEMS:-$ALL_SYSTEMS}"
SIZE_MIB=${P2PFS_BENCH_SIZE_MIB:-1024}
FILES=${P2PFS_BENCH_FILES:-5000}
FIO_SECONDS=${P2PFS_BENCH_FIO_SECONDS:-20}
BASE=${P2PFS_BENCH_DIR:-/dev/shm}
OUT=${P2PFS_BENCH_OUT:-$ROOT/docs/PERFORMANCE.md}
NET=${P2PFS_BENCH_NET:-10.213.0}
P2P_PORT=${P2PFS_PORT:-7800}
P2P_BIN_SRC=${P2PFS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}

for v in SIZE_MIB FILES FIO_SECONDS P2P_PORT; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive number, got '${!v}'"
done
[[ $NET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "P2PFS_BENCH_NET must look like 10.213.0, got '$NET'"
((${#SYSTEMS[@]} > 0)) || die "P2PFS_BENCH_SYSTEMS names no system"
declare -A SEEN=()
for s in "${SYSTEMS[@]}"; do
    [[ " $ALL_SYSTEMS " == *" $s "* ]] || die "unknown system '$s' (known: $ALL_SYSTEMS)"
    [[ -z ${SEEN[$s]:-} ]] || die "system '$s' named twice"
    SEEN[$s]=1
done
selected() { [[ -n ${SEEN[$1]:-} ]]; }

# What every selected system needs, checked before anything starts.
missing=()
need() { command -v "$1" >/dev/null || missing+=("$1 ($2)"); }
need fio fio
need python3 python3
need setsid util-linux
selected bindfs && need bindfs bindfs
selected gocryptfs && need gocryptfs gocryptfs
if selected moosefs; then
    need mfsmaster moosefs-master
    need mfschunkserver moosefs-chunkserver
    need mfsmount moosefs-client
fi
if selected glusterfs; then
    need glusterd glusterfs-server
    need mount.glusterfs glusterfs-client
fi
if selected moosefs || selected glusterfs; then need ip iproute2; fi
((${#missing[@]} == 0)) || die "missing: ${missing[*]}; Debian: apt-get install -y" \
    "bindfs gocryptfs moosefs-master moosefs-chunkserver moosefs-client glusterfs-server fio"
if selected p2pfs; then
    for b in dirsvc peerd fs-client; do
        [[ -x $P2P_BIN_SRC/$b ]] || die "no $P2P_BIN_SRC/$b: build first (cargo build --release) or set P2PFS_BIN"
    done
    for ((p = P2P_PORT; p <= P2P_PORT + 3; p++)); do
        [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] || die "port $p is in use; choose another P2PFS_PORT"
    done
fi
if selected moosefs || selected glusterfs; then
    ! ip -o -4 addr show | grep -qF " $NET." ||
        die "addresses in $NET.0/24 are already in use here; choose another P2PFS_BENCH_NET"
fi
if [[ $OUT != - ]]; then
    [[ $OUT == /* ]] || OUT=$PWD/$OUT
    [[ -d ${OUT%/*} && -w ${OUT%/*} ]] || die "cannot write the report into ${OUT%/*}"
fi
[[ -d $BASE ]] || die "P2PFS_BENCH_DIR $BASE does not exist"

BYTES=$((SIZE_MIB << 20))
WORK=$(mktemp -d "$BASE/p2pfs-bench.XXXXXX")
IN=$WORK/in
mkdir -p "$IN" "$WORK/logs" "$WORK/pids" "$WORK/mnt"
RESULTS=$WORK/results.tsv
: >"$RESULTS"
# The namespace for MooseFS and GlusterFS, and the veth pair into it.
NS=p2pfs-bench-$$
VETH_HOST=pfb$$h
VETH_NS=pfb$$n
HOST_IP=$NET.1
NS_IP=$NET.2
GLUSTER_DIRS=(/var/lib/glusterd /var/log/glusterfs /run/gluster)
CLK_TCK=$(getconf CLK_TCK)
T_START=$SECONDS

# ---------------------------------------------------------------- processes
# Every process the run starts (or finds started for it, like GlusterFS's
# bricks) has a file pids/NAME.pid holding its pid and start time; only a
# process that still matches both is ever signalled.

# Field N (as numbered in proc(5)) of /proc/PID/stat.
proc_field() {
    local s f
    { s=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
    s=${s##*) }
    read -r -a f <<<"$s"
    echo "${f[$2 - 3]}"
}

adopt() {
    local st
    st=$(proc_field "$2" 22) || return 0
    echo "$2 $st" >"$WORK/pids/$1.pid"
}

# Starts CMD... in its own session (Ctrl-C reaches only this script, whose
# trap then stops it in order), output to logs/NAME.log. setsid execs in
# place (the job is no group leader), so $! is the command's own pid.
start_bg() {
    local name=$1
    shift
    setsid "$@" >>"$WORK/logs/$name.log" 2>&1 </dev/null &
    adopt "$name" $!
}

pid_of() {
    local pid st
    [[ -f $WORK/pids/$1.pid ]] || return 1
    read -r pid st <"$WORK/pids/$1.pid"
    [[ $(proc_field "$pid" 22) == "$st" ]] && alive "$pid" || return 1
    echo "$pid"
}

# Stops NAME: TERM, up to TIMEOUT s [15], then KILL.
stop_bg() {
    local name=$1 timeout=${2:-15} pid deadline
    if pid=$(pid_of "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + timeout))
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
        if alive "$pid"; then
            echo "bench.sh: $name (pid $pid) still runs after $timeout s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 5))
            while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
        fi
    fi
    rm -f "$WORK/pids/$name.pid"
}

# Waits for a FUSE mount at MNT made by process NAME.
wait_mounted() {
    local name=$1 mnt=$2 deadline=$((SECONDS + 30))
    until [[ -n $(mount_type "$mnt") ]]; do
        if ! pid_of "$name" >/dev/null; then
            tail -n 20 "$WORK/logs/$name.log" >&2
            die "$name exited before $mnt was mounted"
        fi
        ((SECONDS < deadline)) || die "$mnt was not mounted within 30 s (see $WORK/logs/$name.log)"
        sleep 0.1
    done
}

# Unmounts MNT and waits for its daemon NAME to exit (stops it otherwise).
unmount() {
    local mnt=$1 name=$2 pid deadline
    if [[ -n $(mount_type "$mnt") ]]; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
    if pid=$(pid_of "$name"); then
        deadline=$((SECONDS + 30))
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    fi
    stop_bg "$name"
}

# Sum of utime + stime (clock ticks) of the PIDs, all their threads included.
cpu_ticks() {
    local pid s f total=0
    for pid; do
        { s=$(<"/proc/$pid/stat"); } 2>/dev/null || continue
        s=${s##*) }
        read -r -a f <<<"$s"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Peak resident set (VmHWM) of PID in MiB.
hwm_mib() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# ---------------------------------------------------------------- network namespace
netns_up() {
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    ip link add "$VETH_HOST" type veth peer name "$VETH_NS" netns "$NS"
    ip addr add "$HOST_IP/30" dev "$VETH_HOST"
    ip link set "$VETH_HOST" up
    ip -n "$NS" addr add "$NS_IP/30" dev "$VETH_NS"
    ip -n "$NS" link set "$VETH_NS" up
}

# Call only once the processes inside have stopped (a namespace lives as
# long as a process in it).
netns_down() {
    if ip link show "$VETH_HOST" >/dev/null 2>&1; then ip link del "$VETH_HOST"; fi
    if [[ -e /run/netns/$NS ]]; then ip netns del "$NS"; fi
}

# Waits until something listens on PORT inside the namespace.
wait_ns_port() {
    local port=$1 name=$2 deadline=$((SECONDS + 30))
    until [[ -n $(ip netns exec "$NS" ss -Hltn "sport = :$port" 2>/dev/null) ]]; do
        pid_of "$name" >/dev/null || { tail -n 20 "$WORK/logs/$name.log" >&2; die "$name exited during start-up"; }
        ((SECONDS < deadline)) || die "$name does not listen on port $port after 30 s"
        sleep 0.1
    done
}

# ---------------------------------------------------------------- the systems
# Each system X has: X_start MNT (servers up, MNT mounted, ready for data),
# X_mount MNT, X_umount MNT, X_stop (everything down; harmless when nothing
# runs), X_pids (its processes), X_client (the mount's process).

# bindfs: a local directory through FUSE.
bindfs_start() { mkdir -p "$WORK/bindfs-backing"; bindfs_mount "$1"; }
bindfs_mount() {
    start_bg bindfs bindfs -f --multithreaded -o big_writes "$WORK/bindfs-backing" "$1"
    wait_mounted bindfs "$1"
}
bindfs_umount() { unmount "$1" bindfs; }
bindfs_stop() { unmount "$WORK/mnt/bindfs" bindfs; }
bindfs_pids() { pid_of bindfs || true; }
bindfs_client() { pid_of bindfs; }

# gocryptfs: one node, AES-256-GCM (its default), names in clear.
GOCRYPT=$WORK/gocryptfs
gocryptfs_start() {
    mkdir -p "$GOCRYPT/cipher"
    printf '%s\n' "bench-only password" >"$GOCRYPT/password"
    chmod 600 "$GOCRYPT/password"
    gocryptfs -q -init -plaintextnames -passfile "$GOCRYPT/password" "$GOCRYPT/cipher" \
        >>"$WORK/logs/gocryptfs.log" 2>&1 || die "gocryptfs -init failed (see $WORK/logs/gocryptfs.log)"
    gocryptfs_mount "$1"
}
gocryptfs_mount() {
    start_bg gocryptfs gocryptfs -fg -q -passfile "$GOCRYPT/password" "$GOCRYPT/cipher" "$1"
    wait_mounted gocryptfs "$1"
}
gocryptfs_umount() { unmount "$1" gocryptfs; }
gocryptfs_stop() { unmount "$WORK/mnt/gocryptfs" gocryptfs; }
gocryptfs_pids() { pid_of gocryptfs || true; }
gocryptfs_client() { pid_of gocryptfs; }

# MooseFS: master and chunkservers in the namespace, the mount outside; all
# as root at nice 0 like everything else here (MooseFS's default is -19).
# A stopped master lingers a while as a zombie: its parent is gone and init
# reaps it late.
MFS=$WORK/moosefs
moosefs_start() {
    local i mnt=$1 deadline
    netns_up
    mkdir -p "$MFS/master"
    if [[ -f /var/lib/mfs/metadata.mfs.empty ]]; then
        cp /var/lib/mfs/metadata.mfs.empty "$MFS/master/metadata.mfs"
    else
        printf 'MFSM NEW' >"$MFS/master/metadata.mfs"
    fi
    printf '*\t/\trw,alldirs,admin,maproot=0:0\n' >"$MFS/mfsexports.cfg"
    : >"$MFS/mfstopology.cfg"
    cat >"$MFS/mfsmaster.cfg" <<EOF
WORKING_USER = root
WORKING_GROUP = root
NICE_LEVEL = 0
DATA_PATH = $MFS/master
EXPORTS_FILENAME = $MFS/mfsexports.cfg
TOPOLOGY_FILENAME = $MFS/mfstopology.cfg
EOF
    start_bg mfsmaster ip netns exec "$NS" mfsmaster -f -c "$MFS/mfsmaster.cfg"
    wait_ns_port 9421 mfsmaster
    for i in 1 2 3; do
        mkdir -p "$MFS/cs$i/data" "$MFS/cs$i/hdd"
        echo "$MFS/cs$i/hdd" >"$MFS/cs$i/mfshdd.cfg"
        cat >"$MFS/cs$i/mfschunkserver.cfg" <<EOF
WORKING_USER = root
WORKING_GROUP = root
NICE_LEVEL = 0
DATA_PATH = $MFS/cs$i/data
HDD_CONF_FILENAME = $MFS/cs$i/mfshdd.cfg
MASTER_HOST = $NS_IP
MASTER_RECONNECTION_DELAY = 1
CSSERV_LISTEN_PORT = $((9421 + i))
EOF
        start_bg "mfschunkserver-$i" ip netns exec "$NS" mfschunkserver -f -c "$MFS/cs$i/mfschunkserver.cfg"
    done
    moosefs_mount "$mnt"
    mfssetgoal -r 3 "$mnt" >/dev/null
    # Ready once a new file gets its 3 copies (all chunkservers registered,
    # their space scanned).
    deadline=$((SECONDS + 60))
    until head -c 65536 /dev/urandom 2>/dev/null | dd of="$mnt/.probe" conv=fsync status=none 2>/dev/null &&
        mfscheckfile "$mnt/.probe" 2>/dev/null | grep -q 'with 3 copies'; do
        ((SECONDS < deadline)) || die "MooseFS does not keep 3 copies of a new file after 60 s (logs: $WORK/logs)"
        sleep 0.5
    done
    rm -f "$mnt/.probe"
}
moosefs_mount() {
    start_bg mfsmount mfsmount -f "$1" -H "$NS_IP" -P 9421 -o mfsnice=0
    wait_mounted mfsmount "$1"
}
moosefs_umount() { unmount "$1" mfsmount; }
moosefs_stop() {
    local i
    unmount "$WORK/mnt/moosefs" mfsmount
    for i in 1 2 3; do stop_bg "mfschunkserver-$i"; done
    stop_bg mfsmaster 30
    netns_down
}
moosefs_pids() {
    local n
    for n in mfsmaster mfschunkserver-1 mfschunkserver-2 mfschunkserver-3 mfsmount; do
        pid_of "$n" || true
    done
}
moosefs_client() { pid_of mfsmount; }

# GlusterFS: glusterd with its state, sockets and pid files in the scratch
# dir; bricks on the namespace's address (it refuses loopback ones).
GL=$WORK/glusterfs
GVOL=p2pfsbench
GLUSTER_CLI=(gluster --mode=script --glusterd-sock="$GL/run/glusterd.socket"
    --log-file="$WORK/logs/gluster-cli.log")
gl() { ip netns exec "$NS" "${GLUSTER_CLI[@]}" "$@"; }
# glusterd also writes under /var/lib/glusterd, /var/log/glusterfs and
# /run/gluster whatever its working directory: what is new there after
# the run is removed (only what did not exist before).
gluster_snapshot() {
    find "${GLUSTER_DIRS[@]}" -print 2>/dev/null | sort >"$WORK/gluster-before.txt" || true
}
gluster_unsnapshot() {
    [[ -f $WORK/gluster-before.txt ]] || return 0
    local p r top
    find "${GLUSTER_DIRS[@]}" -print 2>/dev/null | sort >"$WORK/gluster-after.txt" || true
    comm -13 "$WORK/gluster-before.txt" "$WORK/gluster-after.txt" | while IFS= read -r p; do
        top=false
        for r in "${GLUSTER_DIRS[@]}"; do [[ $p == "$r" ]] && top=true; done
        # Only the topmost new path; rm -r takes what is below it.
        if $top || grep -qxF -- "${p%/*}" "$WORK/gluster-before.txt"; then rm -rf -- "$p"; fi
    done
    rm -f "$WORK/gluster-before.txt"
}
glusterfs_start() {
    local mnt=$1 deadline f
    gluster_snapshot
    netns_up
    mkdir -p "$GL/lib" "$GL/run" "$GL/b1" "$GL/b2" "$GL/b3"
    cat >"$GL/glusterd.vol" <<EOF
volume management
    type mgmt/glusterd
    option working-directory $GL/lib
    option run-directory $GL/run
    option glusterd-sockfile $GL/run/glusterd.socket
    option transport-type socket
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
EOF
    start_bg glusterd ip netns exec "$NS" glusterd -N -f "$GL/glusterd.vol" -l "$WORK/logs/glusterd.log"
    deadline=$((SECONDS + 30))
    until gl volume list >/dev/null 2>&1; do
        pid_of glusterd >/dev/null || { tail -n 20 "$WORK/logs/glusterd.log" >&2; die "glusterd exited during start-up"; }
        ((SECONDS < deadline)) || die "glusterd does not answer after 30 s"
        sleep 0.2
    done
    gl volume create "$GVOL" replica 3 "$NS_IP:$GL/b1" "$NS_IP:$GL/b2" "$NS_IP:$GL/b3" force >/dev/null
    gl volume start "$GVOL" >/dev/null
    # The bricks and the self-heal daemon are glusterd's children; their
    # pid files are in our run directory.
    deadline=$((SECONDS + 30))
    until (($(find "$GL/run/vols/$GVOL" -name '*.pid' 2>/dev/null | wc -l) >= 3)); do
        ((SECONDS < deadline)) || die "GlusterFS bricks did not start within 30 s"
        sleep 0.2
    done
    for f in "$GL/run/vols/$GVOL"/*.pid "$GL/run/shd/$GVOL"/*.pid; do
        [[ -s $f ]] || continue
        adopt "gluster-$(basename "$f" .pid)" "$(<"$f")"
    done
    glusterfs_mount "$mnt"
    # Ready once a new file reaches all three bricks.
    deadline=$((SECONDS + 60))
    until echo probe >"$mnt/.probe" 2>/dev/null &&
        [[ -e $GL/b1/.probe && -e $GL/b2/.probe && -e $GL/b3/.probe ]]; do
        ((SECONDS < deadline)) || die "GlusterFS does not replicate a new file to 3 bricks after 60 s"
        sleep 0.5
    done
    rm -f "$mnt/.probe"
}
glusterfs_mount() {
    local mnt=$1 p args
    mount -t glusterfs -o "log-file=$WORK/logs/glusterfs-client.log" "$NS_IP:/$GVOL" "$mnt"
    # mount.glusterfs writes no pid file: the client is the glusterfs
    # process whose last argument is our mountpoint.
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/exe" 2>/dev/null) == */glusterfsd ]] || continue
        args=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null | tail -n 1) || continue
        if [[ $args == "$mnt" ]]; then adopt glusterfs-client "${p#/proc/}"; break; fi
    done
    pid_of glusterfs-client >/dev/null || die "cannot find the glusterfs client process of $mnt"
}
glusterfs_umount() { unmount "$1" glusterfs-client; }
glusterfs_stop() {
    local f n
    unmount "$WORK/mnt/glusterfs" glusterfs-client
    if pid_of glusterd >/dev/null; then
        timeout 60 ip netns exec "$NS" "${GLUSTER_CLI[@]}" volume stop "$GVOL" >/dev/null 2>&1 || true
    fi
    for f in "$WORK"/pids/gluster-*.pid; do
        [[ -e $f ]] || continue
        n=${f##*/}
        stop_bg "${n%.pid}"
    done
    stop_bg glusterd
    netns_down
    gluster_unsnapshot
}
glusterfs_pids() {
    local f n
    pid_of glusterd || true
    for f in "$WORK"/pids/gluster-*.pid "$WORK/pids/glusterfs-client.pid"; do
        [[ -e $f ]] || continue
        n=${f##*/}
        pid_of "${n%.pid}" || true
    done
}
glusterfs_client() { pid_of glusterfs-client; }

# p2pfs: scripts/up.sh with its own state dir and ports; a remount stops
# only the mount (fs-client) and lets up.sh start it again.
P2P_STATE=$WORK/p2pfs-state
p2pfs_env() {
    export P2PFS_STATE=$P2P_STATE P2PFS_PORT=$P2P_PORT P2PFS_PEERS=3 P2PFS_REPLICAS=3 \
        P2PFS_BIN=$WORK/bin P2PFS_META=redb
}
p2pfs_start() { p2pfs_mount "$1"; }
p2pfs_mount() {
    p2pfs_env
    if ! "$ROOT/scripts/up.sh" "$1" >>"$WORK/logs/p2pfs-up.log" 2>&1; then
        tail -n 30 "$WORK/logs/p2pfs-up.log" >&2
        die "scripts/up.sh failed"
    fi
}
p2pfs_umount() {
    local PIDS=$P2P_STATE/pids pid deadline
    if pid=$(live_pid fs-client fs-client); then
        kill -TERM "$pid"
        deadline=$((SECONDS + 60))
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
        alive "$pid" && die "fs-client (pid $pid) does not exit 60 s after SIGTERM"
    fi
    rm -f "$PIDS/fs-client.pid"
    if [[ -n $(mount_type "$1") ]]; then umount -l "$1"; fi
}
p2pfs_stop() {
    [[ -d $P2P_STATE ]] || return 0
    p2pfs_env
    "$ROOT/scripts/down.sh" >>"$WORK/logs/p2pfs-down.log" 2>&1 ||
        echo "bench.sh: scripts/down.sh failed (see its log)" >&2
}
p2pfs_pids() {
    local PIDS=$P2P_STATE/pids n
    for n in dirsvc peerd-1 peerd-2 peerd-3; do live_pid "$n" "${n%-*}" || true; done
    live_pid fs-client fs-client || true
}
p2pfs_client() { local PIDS=$P2P_STATE/pids; live_pid fs-client fs-client; }

# ---------------------------------------------------------------- cleanup
STARTED=()
cleanup() {
    local rc=$? s
    set +e
    trap '' INT TERM HUP
    for s in "${STARTED[@]}"; do "${s}_stop"; done
    for f in "$WORK"/pids/*.pid; do
        [[ -e $f ]] || continue
        f=${f##*/}
        stop_bg "${f%.pid}" 5
    done
    netns_down 2>/dev/null
    gluster_unsnapshot
    if [[ -n ${KEEP_LOGS:-} ]]; then
        cp -r "$WORK/logs" "$KEEP_LOGS" && echo "bench.sh: logs of the run kept in $KEEP_LOGS" >&2
    fi
    # Never let rm walk into a mount that is still there.
    if awk -v w="$WORK/" 'index($2, w) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        echo "bench.sh: something is still mounted under $WORK; not removing it" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- inputs
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if selected p2pfs; then
    mkdir -p "$WORK/bin"
    cp "$P2P_BIN_SRC/dirsvc" "$P2P_BIN_SRC/peerd" "$P2P_BIN_SRC/fs-client" "$WORK/bin/"
fi
say "inputs: ${SIZE_MIB} MiB of random bytes, ${FILES} small files (scratch: $WORK)"
head -c "$BYTES" /dev/urandom >"$IN/big"
# FILES files of 64 B-64 KiB (log-uniform sizes and contents from seed 42),
# 100 per directory, in a tar archive with fixed owners and times.
mkdir "$IN/tree"
python3 - "$IN/tree" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    size = int(64 * (1024 ** rng.random()))  # 64 B .. 64 KiB
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(rng.randbytes(size))
EOF
tar -C "$IN/tree" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -cf "$IN/tree.tar" .
TREE_MB=$(du -sm --apparent-size "$IN/tree" | cut -f1)

# ---------------------------------------------------------------- measuring
DROP_WARNED=
drop_caches() {
    sync
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null && [[ -z $DROP_WARNED ]]; then
        echo "bench.sh: warning: cannot drop caches; cold figures may come from memory" >&2
        DROP_WARNED=1
    fi
}
result() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }
mbps() { awk -v b="$BYTES" -v t0="$1" -v t1="$2" 'BEGIN { printf "%.1f", b / 1e6 / (t1 - t0) }'; }
rate() { awk -v n="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.1f", n / (t1 - t0) }'; }
secs() { awk -v t0="$1" -v t1="$2" 'BEGIN { printf "%.3f", t1 - t0 }'; }
per_gib() { awk -v t="$1" -v hz="$CLK_TCK" -v mib="$SIZE_MIB" 'BEGIN { printf "%.2f", t / hz / (mib / 1024) }'; }
cold() { "${1}_umount" "$2"; "${1}_mount" "$2"; drop_caches; }

# Runs in a subshell: a failure ends this system's measurements only.
measure() {
    local sys=$1 mnt=$WORK/mnt/$1 pids t0 t1 c0 c1 client json n
    mkdir -p "$mnt"
    "${sys}_start" "$mnt"
    say "$sys: up ($((SECONDS - T_SYS)) s)"

    # 1. sequential write
    drop_caches
    read -r -a pids <<<"$("${sys}_pids" | tr '\n' ' ')"
    c0=$(cpu_ticks "${pids[@]}")
    t0=$EPOCHREALTIME
    dd if="$IN/big" of="$mnt/big" bs=1M conv=fsync status=none
    t1=$EPOCHREALTIME
    c1=$(cpu_ticks "${pids[@]}")
    result "$sys" write "$(mbps "$t0" "$t1")"
    result "$sys" cpu_write "$(per_gib $((c1 - c0)))"
    client=$("${sys}_client")
    result "$sys" rss "$(hwm_mib "$client")"
    say "$sys: write $(mbps "$t0" "$t1") MB/s (${#pids[@]} processes: $(per_gib $((c1 - c0))) CPU s/GiB; mount peak RSS $(hwm_mib "$client") MiB)"

    # 2. cold sequential read
    cold "$sys" "$mnt"
    read -r -a pids <<<"$("${sys}_pids" | tr '\n' ' ')"
    c0=$(cpu_ticks "${pids[@]}")
    t0=$EPOCHREALTIME
    dd if="$mnt/big" of=/dev/null bs=1M status=none
    t1=$EPOCHREALTIME
    c1=$(cpu_ticks "${pids[@]}")
    result "$sys" read "$(mbps "$t0" "$t1")"
    result "$sys" cpu_read "$(per_gib $((c1 - c0)))"
    say "$sys: cold read $(mbps "$t0" "$t1") MB/s ($(per_gib $((c1 - c0))) CPU s/GiB)"

    # 3. cold 4 KiB random reads, QD1 (fio takes \: for a colon in a name)
    cold "$sys" "$mnt"
    json=$WORK/logs/fio-$sys.json
    fio --name=randread --filename="${mnt//:/\\:}/big" --rw=randread --bs=4k --iodepth=1 \
        --ioengine=psync --runtime="$FIO_SECONDS" --time_based --output-format=json \
        --output="$json" >/dev/null
    n=$(python3 -c 'import json, sys; print("%.0f" % json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"])' "$json")
    result "$sys" rand "$n"
    say "$sys: cold 4 KiB random read $n IOPS"
    if cmp -s "$IN/big" "$mnt/big"; then result "$sys" intact_big yes; else
        result "$sys" intact_big no
        echo "bench.sh: $sys: the big file read back differs from what was written" >&2
    fi

    # 4. tar x + sync (of this mount only: a global sync would also wait for
    # whatever else the machine writes to its disks)
    t0=$EPOCHREALTIME
    mkdir "$mnt/tree"
    tar -C "$mnt/tree" -xf "$IN/tree.tar"
    sync -f "$mnt/tree"
    t1=$EPOCHREALTIME
    result "$sys" untar "$(rate "$FILES" "$t0" "$t1")"
    say "$sys: tar x $(rate "$FILES" "$t0" "$t1") files/s"

    # 5. cold find -ls
    cold "$sys" "$mnt"
    t0=$EPOCHREALTIME
    find "$mnt/tree" -ls >/dev/null
    t1=$EPOCHREALTIME
    result "$sys" find "$(secs "$t0" "$t1")"
    say "$sys: cold find -ls $(secs "$t0" "$t1") s"

    # 6. cold cat of every file
    cold "$sys" "$mnt"
    t0=$EPOCHREALTIME
    find "$mnt/tree" -type f -print0 | xargs -0 cat >/dev/null
    t1=$EPOCHREALTIME
    result "$sys" cat "$(rate "$FILES" "$t0" "$t1")"
    say "$sys: cold cat $(rate "$FILES" "$t0" "$t1") files/s"
    if diff -r -q "$IN/tree" "$mnt/tree" >/dev/null; then result "$sys" intact_tree yes; else
        result "$sys" intact_tree no
        echo "bench.sh: $sys: the small files read back differ from the archive's" >&2
    fi
}

# The directory holding a system's data (its backing store), removed after
# the system is measured.
backing_of() {
    case $1 in
    bindfs) echo "$WORK/bindfs-backing" ;;
    gocryptfs) echo "$GOCRYPT" ;;
    moosefs) echo "$MFS" ;;
    glusterfs) echo "$GL" ;;
    p2pfs) echo "$P2P_STATE" ;;
    esac
}

FAILED=()
for sys in "${SYSTEMS[@]}"; do
    say "== $sys"
    T_SYS=$SECONDS
    STARTED+=("$sys")
    set +e
    (
        set -e
        measure "$sys"
    )
    rc=$?
    set -e
    if ((rc != 0)); then
        echo "bench.sh: $sys: failed (exit $rc); its figures are missing" >&2
        FAILED+=("$sys")
        KEEP_LOGS=${KEEP_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/p2pfs-bench-logs.XXXXXX")}
    fi
    "${sys}_stop"
    unset 'STARTED[-1]'
    # Its data goes with it (kept when it failed: logs may be there), so
    # every system starts with the same free memory: on tmpfs the last one
    # would otherwise write into memory this VM has not touched before,
    # which halved p2pfs's write speed (116 MB/s last, 274 alone).
    backing=$(backing_of "$sys")
    if ((rc == 0)) && [[ -n $backing && -d $backing ]]; then rm -rf -- "$backing"; fi
    result "$sys" wall $((SECONDS - T_SYS))
    say "$sys: done in $((SECONDS - T_SYS)) s"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((SECONDS - T_START))

# ---------------------------------------------------------------- report
declare -A R=()
while IFS=$'\t' read -r s m v; do R[$s,$m]=$v; done <"$RESULTS"

declare -A LABEL=(
    [bindfs]="bindfs (FUSE ceiling)" [gocryptfs]="gocryptfs" [moosefs]="MooseFS, goal 3"
    [glusterfs]="GlusterFS replica 3" [p2pfs]="p2pfs R = 3")
METRICS=(write read rand untar find cat cpu_write cpu_read rss)
declare -A MNAME=(
    [write]="${SIZE_MIB} MiB sequential write, MB/s" [read]="cold sequential read, MB/s"
    [rand]="cold 4 KiB random read QD1, IOPS" [untar]="tar x of ${FILES} files + sync, files/s"
    [find]="cold find -ls, s" [cat]="cold cat of every file, files/s"
    [cpu_write]="CPU per GiB written, core-s" [cpu_read]="CPU per GiB read, core-s"
    [rss]="mount process peak RSS (write), MiB")
# Higher is better, or lower.
declare -A BETTER=([write]=h [read]=h [rand]=h [untar]=h [find]=l [cat]=h [cpu_write]=l [cpu_read]=l [rss]=l)
declare -A FMT=([write]="%.0f" [read]="%.0f" [rand]="%.0f" [untar]="%.0f" [find]="%.3f" [cat]="%.0f"
    [cpu_write]="%.1f" [cpu_read]="%.1f" [rss]="%.0f")

fig() {
    local v=${R[$1,$2]:-}
    if [[ -z $v ]]; then echo "-"; else awk -v v="$v" -v f="${FMT[$2]}" 'BEGIN { printf f, v }'; fi
}
# The best of MooseFS and GlusterFS for METRIC, or nothing.
best_ref() {
    local m=$1 s v best=
    for s in moosefs glusterfs; do
        v=${R[$s,$m]:-}
        [[ -n $v ]] || continue
        if [[ -z $best ]]; then best=$v
        elif [[ ${BETTER[$m]} == h ]]; then best=$(awk -v a="$best" -v b="$v" 'BEGIN { print (b > a ? b : a) }')
        else best=$(awk -v a="$best" -v b="$v" 'BEGIN { print (b < a ? b : a) }'); fi
    done
    echo "$best"
}
# How many times better p2pfs is than that best (>1: p2pfs is better);
# for times, CPU and memory: their figure divided by p2pfs's.
p2p_ratio() {
    local m=$1 ref p
    ref=$(best_ref "$m")
    p=${R[p2pfs,$m]:-}
    [[ -n $ref && -n $p ]] || { echo "n/a"; return; }
    awk -v p="$p" -v r="$ref" -v h="${BETTER[$m]}" \
        'BEGIN { x = (h == "h") ? (r > 0 ? p / r : 0) : (p > 0 ? r / p : 0); printf "%.2f×", x }'
}

# The table, as text and as markdown.
print_table() {
    local m s r w=12
    printf '%-40s' "figure"
    for s in "${SYSTEMS[@]}"; do printf ' %*s' "$w" "$s"; done
    selected p2pfs && printf ' %*s' "$((w + 1))" "p2pfs ×"
    printf '\n'
    for m in "${METRICS[@]}"; do
        printf '%-40s' "${MNAME[$m]}"
        for s in "${SYSTEMS[@]}"; do printf ' %*s' "$w" "$(fig "$s" "$m")"; done
        if selected p2pfs; then
            r=$(p2p_ratio "$m")
            # "×" is two bytes, and printf pads bytes.
            if [[ $r == *× ]]; then printf ' %*s' "$((w + 1))" "$r"; else printf ' %*s' "$w" "$r"; fi
        fi
        printf '\n'
    done
}
md_table() {
    local m s
    printf '| figure |'
    for s in "${SYSTEMS[@]}"; do printf ' %s |' "${LABEL[$s]}"; done
    selected p2pfs && printf ' p2pfs vs best of MooseFS/GlusterFS |'
    printf '\n|---|'
    for s in "${SYSTEMS[@]}"; do printf -- '---:|'; done
    selected p2pfs && printf -- '---:|'
    printf '\n'
    for m in "${METRICS[@]}"; do
        printf '| %s |' "${MNAME[$m]}"
        for s in "${SYSTEMS[@]}"; do printf ' %s |' "$(fig "$s" "$m")"; done
        selected p2pfs && printf ' %s |' "$(p2p_ratio "$m")"
        printf '\n'
    done
    printf '| data read back intact |'
    for s in "${SYSTEMS[@]}"; do
        if [[ -z ${R[$s,intact_big]:-} || -z ${R[$s,intact_tree]:-} ]]; then printf ' - |'
        elif [[ ${R[$s,intact_big]} == yes && ${R[$s,intact_tree]} == yes ]]; then printf ' yes |'
        else printf ' **NO** |'; fi
    done
    selected p2pfs && printf ' |'
    printf '\n'
}

# Issue 10's Done-when targets: ratio targets against the best of MooseFS
# and GlusterFS, and two absolute ones.
targets_table() {
    local m want v ref status shown
    printf '| target | p2pfs | best of MooseFS/GlusterFS | measured | status |\n|---|---:|---:|---:|---|\n'
    for t in write:2.0 read:1.5 rand:1.5 untar:3.0 find:1.5 cat:2.0; do
        m=${t%%:*} want=${t#*:}
        ref=$(best_ref "$m")
        v=$(p2p_ratio "$m")
        if [[ $v == n/a ]]; then status="not measured"
        elif awk -v x="${v%×}" -v w="$want" 'BEGIN { exit !(x >= w) }'; then status=met
        else status="not met"; fi
        shown=-
        [[ -n $ref ]] && shown=$(awk -v v="$ref" -v f="${FMT[$m]}" 'BEGIN { printf f, v }')
        printf '| %s ≥ %s× | %s | %s | %s | %s |\n' "${MNAME[$m]%%,*}" "$want" "$(fig p2pfs "$m")" "$shown" "$v" "$status"
    done
    v=${R[p2pfs,cpu_write]:-}
    if [[ -z $v ]]; then status="not measured"
    elif awk -v x="$v" 'BEGIN { exit !(x <= 5) }'; then status=met; else status="not met"; fi
    printf '| CPU ≤ 5 core-s per GiB written | %s | | | %s |\n' "$(fig p2pfs cpu_write)" "$status"
    v=${R[p2pfs,rss]:-}
    if [[ -z $v ]]; then status="not measured"
    elif awk -v x="$v" 'BEGIN { exit !(x < 256) }'; then status=met; else status="not met"; fi
    printf '| fs-client peak RSS < 256 MiB | %s MiB | | | %s |\n' "$(fig p2pfs rss)" "$status"
}

pkgver() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo "not installed"; }

echo
echo "Side by side, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, backing store: $(df --output=fstype "$BASE" | tail -n 1) ($BASE)"
print_table
if selected p2pfs; then
    echo "(p2pfs × = how many times better p2pfs is than the best of MooseFS and GlusterFS;"
    echo " for find time, CPU and RSS: their figure divided by p2pfs's)"
fi
for s in "${SYSTEMS[@]}"; do
    if [[ ${R[$s,intact_big]:-} == no || ${R[$s,intact_tree]:-} == no ]]; then
        echo "WARNING: $s returned data that differs from what was written"
    fi
done
((${#FAILED[@]} == 0)) || echo "FAILED: ${FAILED[*]} (figures missing; logs in $KEEP_LOGS)"
echo "total time: $((ELAPSED / 60)) min $((ELAPSED % 60)) s"

if [[ $OUT != - ]]; then
    {
        cat <<EOF
# Performance: p2pfs side by side

One run of \`scripts/bench.sh\` (issue 10) on $(date -u '+%Y-%m-%d') ($(date -u '+%H:%M UTC')):
every system on the same input files and the same backing store, each
brought up, measured and torn down before the next. The run took
$((ELAPSED / 60)) min $((ELAPSED % 60)) s.

## How to run

As root, with the other systems installed
(\`apt-get install -y bindfs gocryptfs moosefs-master moosefs-chunkserver
moosefs-client glusterfs-server fio\`) and p2pfs built
(\`cargo build --release\`):

    scripts/bench.sh

writes this file. A quick run of some systems, report elsewhere:

    P2PFS_BENCH_SYSTEMS="bindfs p2pfs" P2PFS_BENCH_SIZE_MIB=64 P2PFS_BENCH_FILES=500 \\
        P2PFS_BENCH_OUT=/tmp/perf.md scripts/bench.sh

\`scripts/bench.sh --help\` lists the settings. Keep the machine otherwise
idle: on a shared machine compare ratios, not absolute figures.

## Machine

- CPU: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores
- memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
- kernel: $(uname -r) ($(awk -F= '$1 == "PRETTY_NAME" { gsub(/"/, "", $2); print $2 }' /etc/os-release 2>/dev/null))
- backing store: $(df --output=fstype "$BASE" | tail -n 1) ($BASE)
- load average (1, 5, 15 min): $LOAD_START at the start, $LOAD_END at the end

## Versions

- p2pfs: $(git -C "$ROOT" describe --always --dirty --tags 2>/dev/null || echo unknown) (binaries from ${P2P_BIN_SRC}, built $(date -u -r "$P2P_BIN_SRC/fs-client" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo "?"))
- bindfs $(pkgver bindfs), gocryptfs $(pkgver gocryptfs)
- MooseFS: moosefs-master $(pkgver moosefs-master), moosefs-chunkserver $(pkgver moosefs-chunkserver), moosefs-client $(pkgver moosefs-client)
- GlusterFS: glusterfs-server $(pkgver glusterfs-server), glusterfs-client $(pkgver glusterfs-client)
- fio $(pkgver fio), tar $(pkgver tar), fuse3 $(pkgver fuse3)

## Settings

- bindfs: \`bindfs -f --multithreaded -o big_writes\` of a directory on the backing store.
- gocryptfs: one node, \`gocryptfs -init -plaintextnames -passfile\`, mounted
  with \`-fg\` (its defaults otherwise: AES-256-GCM).
- MooseFS: mfsmaster and 3 mfschunkservers (one data folder each on the
  backing store) in a private network namespace, mfsmount from outside over a
  veth pair ($HOST_IP ↔ $NS_IP); \`mfssetgoal -r 3\` on the root; daemons and
  mount as root at nice 0 (\`NICE_LEVEL = 0\`, \`-o mfsnice=0\`; MooseFS's
  default is -19, which nothing else here gets); defaults otherwise.
- GlusterFS: glusterd in the same kind of namespace (it refuses bricks on
  loopback addresses), \`gluster volume create V replica 3 $NS_IP:/b1
  $NS_IP:/b2 $NS_IP:/b3 force\` with the bricks on the backing store,
  \`mount -t glusterfs\` from outside; volume defaults.
- p2pfs: \`scripts/up.sh\` with P2PFS_PEERS=3, P2PFS_REPLICAS=3, P2PFS_META=redb:
  dirsvc, 3 peerd and the fs-client mount on loopback (mutual TLS), all
  state on the backing store.
- Inputs: ${SIZE_MIB} MiB from /dev/urandom (zeros would be holes); ${FILES}
  files of 64 B-64 KiB (log-uniform sizes, seed 42, ${TREE_MB} MB in all,
  100 per directory) in one tar archive. Both on the backing store.
- "cold": the mount unmounted and mounted again, then \`sync; echo 3 >
  /proc/sys/vm/drop_caches\` (servers keep running).
- 1: \`dd if=INPUT of=MNT/big bs=1M conv=fsync\`; 2 (cold): \`dd if=MNT/big
  of=/dev/null bs=1M\`; 3 (cold): \`fio --rw=randread --bs=4k --iodepth=1
  --ioengine=psync --runtime=${FIO_SECONDS} --time_based\` on MNT/big; 4: \`tar -C
  MNT/tree -xf\` then \`sync -f MNT/tree\` (the mount's file system only: a
  global sync would also wait for the machine's disks); 5 (cold): \`find
  MNT/tree -ls\`; 6 (cold): \`find MNT/tree -type f -print0 | xargs -0 cat\`.
- CPU: utime + stime (/proc/PID/stat) of the system's own processes (bindfs;
  gocryptfs; mfsmaster, 3 mfschunkserver, mfsmount; glusterd, 3 brick
  glusterfsd, the self-heal daemon, the glusterfs client; dirsvc, 3 peerd,
  fs-client) before and after workload 1 (written) and 2 (read), per GiB.
  Not counted: the kernel's work on behalf of dd itself.
- Peak RSS: VmHWM of the mount process (bindfs, gocryptfs, mfsmount,
  glusterfs, fs-client) right after the write: the peak of a fresh mount
  through the whole write.
- After workloads 3 and 6 the data read back is compared with the input
  (untimed).

## Results

EOF
        md_table
        cat <<EOF

"p2pfs vs best": how many times better p2pfs is than the better of MooseFS
and GlusterFS on that figure (for find time, CPU and RSS: their figure
divided by p2pfs's), so above 1.00× p2pfs is ahead.
EOF
        ((${#FAILED[@]} == 0)) || printf '\nFailed during the run (figures missing): %s.\n' "${FAILED[*]}"
        cat <<EOF

## Issue 10's Done-when targets

EOF
        targets_table
    } >"$OUT.tmp.$$"
    mv "$OUT.tmp.$$" "$OUT"
    echo "report: $OUT"
fi
