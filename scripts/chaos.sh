#!/usr/bin/env bash
# Chaos run: starts its own cluster (dirsvc + 5 peers, R = 3, short failure
# timeouts), rsyncs a tree of at least 2,000 files and a 1 GiB file into the
# mount while a random peer is killed with kill -9 and restarted every few
# seconds, then removes two peers for good, waits until dirsvc reports no
# under-replicated chunk, checks every byte (diff -r --no-dereference,
# sha256sum) through a fresh mount and prints the timings. Always stops what
# it started (and only that, by PID).
#
# Usage: scripts/chaos.sh
#
# Environment (defaults in brackets):
#   P2PFS_STATE              state dir, reused only if an earlier chaos run made it [./.p2pfs-chaos]
#   P2PFS_PORT               dirsvc port; peers use PORT+1..PORT+5 [7800]
#   P2PFS_CHAOS_TREE         tree to copy, at least 2,000 files [/usr/include]
#   P2PFS_CHAOS_BIG_MIB      size of the big file in MiB [1024]
#   P2PFS_CHAOS_GC_GRACE     dirsvc --gc-grace-secs [10]
#   P2PFS_CHAOS_TIMEOUT      bound in seconds on each phase (copy, repair) [1200]
#   P2PFS_CHAOS_KEEP         1: keep peers' data and the big file afterwards [0]
#   CARGO_TARGET_DIR         where cargo puts the release binaries [<repo>/target]
set -euo pipefail

die() { echo "chaos.sh: $*" >&2; exit 1; }
say() { printf '[chaos %6.1fs] %s\n' "$(elapsed "$T_START")" "$*"; }

[[ $# -eq 0 ]] || { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${P2PFS_PORT:-7800}
PEERS=5
REPLICAS=3
TREE=${P2PFS_CHAOS_TREE:-/usr/include}
BIG_MIB=${P2PFS_CHAOS_BIG_MIB:-1024}
GC_GRACE=${P2PFS_CHAOS_GC_GRACE:-10}
TIMEOUT=${P2PFS_CHAOS_TIMEOUT:-1200}
KEEP=${P2PFS_CHAOS_KEEP:-0}
for v in PORT BIG_MIB GC_GRACE TIMEOUT KEEP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done
(( PORT + PEERS <= 65535 )) || die "P2PFS_PORT + $PEERS exceeds 65535"
[[ -d $TREE ]] || die "P2PFS_CHAOS_TREE=$TREE is not a directory"
for tool in rsync diff sha256sum awk setsid; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

# Short timeouts so a run takes minutes: suspect after 1 s, down after 2 s.
DIRSVC_FLAGS=(--peer-suspect-after-ms 1000 --peer-down-after-ms 2000 --repair-interval-ms 200
              --gc-interval-secs 1 --gc-grace-secs "$GC_GRACE")
PEER_FLAGS=(--heartbeat-interval-ms 300)

T_START=$(date +%s.%N)
# Seconds since the timestamp $1, one decimal.
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- state
STATE=${P2PFS_STATE:-./.p2pfs-chaos}
if [[ -e $STATE && ! -e $STATE/.chaos-state ]] && [[ -n $(ls -A "$STATE" 2>/dev/null) ]]; then
    die "$STATE exists and was not made by chaos.sh; pick another P2PFS_STATE"
fi
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd -P)
touch "$STATE/.chaos-state"
PIDS=$STATE/pids
MNT=$STATE/mnt
DIRSVC_ADDR=127.0.0.1:$PORT
IDENTITY=$STATE/identity.txt
STOP_FLAG=$STATE/run/chaos.stop

# ---------------------------------------------------------------- helpers
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Sends signal SIG to the daemon of pids/NAME.pid (if it is ours and runs),
# waits up to TIMEOUT s for it to exit, then SIGKILL. Removes the PID file.
stop() {
    local name=$1 bin_name=$2 sig=$3 timeout=$4 pid deadline
    if pid=$(live_pid "$name" "$bin_name"); then
        kill "-$sig" "$pid" 2>/dev/null || true
        deadline=$((SECONDS + timeout))
        while alive "$pid" && (( SECONDS < deadline )); do sleep 0.05; done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        deadline=$((SECONDS + 5))
        while alive "$pid" && (( SECONDS < deadline )); do sleep 0.05; done
    fi
    rm -f "$PIDS/$name.pid"
}

show_log() {
    echo "---- last lines of $1 ----" >&2
    tail -n 30 "$1" >&2 2>/dev/null || true
}

# Starts BIN with ARGS in its own session, pid in pids/NAME.pid, output
# appended to logs/NAME.log. Started from a subshell, so this shell does not
# track it as a job (and prints nothing when the chaos loop kills it); with
# no job control setsid execs in place, so $! is the daemon's own pid.
start_daemon() {
    local name=$1 bin=$2
    shift 2
    (
        nohup setsid "$bin" "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
        echo $! >"$PIDS/$name.pid"
    )
}

# Waits (bounded) for daemon NAME to write its address file FILE.
wait_addr() {
    local name=$1 file=$2 deadline=$((SECONDS + 30)) pid
    pid=$(<"$PIDS/$name.pid")
    until [[ -s $file ]]; do
        alive "$pid" || { show_log "$STATE/logs/$name.log"; die "$name (pid $pid) exited during start-up"; }
        (( SECONDS < deadline )) || { show_log "$STATE/logs/$name.log"; die "$name did not start within 30 s"; }
        sleep 0.05
    done
}

start_peer() {
    local i=$1 name=peerd-$1
    rm -f "$STATE/run/$name.addr"
    start_daemon "$name" "$BIN/peerd" --listen "127.0.0.1:$((PORT + i))" --data-dir "$STATE/$name" \
        --dirsvc "$DIRSVC_ADDR" --addr-file "$STATE/run/$name.addr" "${PEER_FLAGS[@]}"
    wait_addr "$name" "$STATE/run/$name.addr"
}

mount_volume() {
    start_daemon fs-client "$BIN/fs-client" mount --dirsvc "$DIRSVC_ADDR" -i "$IDENTITY" \
        --pin-dir "$STATE/pins" "$MNT"
    local pid deadline=$((SECONDS + 30))
    pid=$(<"$PIDS/fs-client.pid")
    until [[ $(mount_type "$MNT") == fuse.p2pfs ]]; do
        alive "$pid" || { show_log "$STATE/logs/fs-client.log"; die "fs-client exited before mounting"; }
        (( SECONDS < deadline )) || { show_log "$STATE/logs/fs-client.log"; die "no mount after 30 s"; }
        sleep 0.05
    done
}

unmount_volume() {
    stop fs-client fs-client TERM 120
    if [[ -n $(mount_type "$MNT") ]]; then
        umount -l "$MNT" || true
    fi
}

# `fs-client status` once, into $STATUS (empty if dirsvc does not answer).
STATUS=
read_status() { STATUS=$(timeout 20 "$BIN/fs-client" status --dirsvc "$DIRSVC_ADDR" 2>/dev/null || true); }
# Field KEY of the last read_status (empty if missing).
field() { awk -F': *' -v k="$1" '$0 == "" { exit } $1 == k { print $2; exit }' <<<"$STATUS"; }

CHAOS_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CHAOS_PID ]] && alive "$CHAOS_PID"; then
        touch "$STOP_FLAG"
        local deadline=$((SECONDS + 20))
        while alive "$CHAOS_PID" && (( SECONDS < deadline )); do sleep 0.1; done
        if alive "$CHAOS_PID"; then kill -KILL "$CHAOS_PID" 2>/dev/null || true; fi
    fi
    # `timeout` passes TERM on to rsync.
    if [[ -n ${RSYNC_PID:-} ]] && alive "$RSYNC_PID"; then kill -TERM "$RSYNC_PID" 2>/dev/null || true; fi
    unmount_volume
    local f name
    for f in "$PIDS"/peerd-*.pid; do
        [[ -e $f ]] || continue
        name=${f##*/}
        stop "${name%.pid}" peerd TERM 30
    done
    stop dirsvc dirsvc TERM 30
    if (( KEEP == 0 )); then
        rm -rf "$STATE"/peerd-* "$STATE/dirsvc" "$STATE/big.bin"
    fi
    if (( rc == 0 )); then
        echo "chaos.sh: passed; logs in $STATE/logs"
    else
        echo "chaos.sh: FAILED (exit $rc); logs in $STATE/logs" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- build
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$PWD/$TARGET
BIN=$TARGET/release
say "building release binaries into $BIN"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --bins -p p2pfs-dirsvc -p p2pfs-peerd -p p2pfs-fs-client)

# ---------------------------------------------------------------- fresh cluster
for name in fs-client dirsvc peerd-1 peerd-2 peerd-3 peerd-4 peerd-5; do
    bin=${name%%-[0-9]*}
    if pid=$(live_pid "$name" "$bin"); then
        trap - EXIT
        die "$name from an earlier run still runs (pid $pid); stop it (or use another P2PFS_STATE)"
    fi
done
if [[ -n $(mount_type "$MNT") ]]; then umount -l "$MNT"; fi
rm -rf "$STATE"/peerd-* "$STATE/dirsvc" "$STATE/run" "$PIDS" "$STATE/logs" "$IDENTITY"
mkdir -p "$PIDS" "$STATE/logs" "$STATE/dirsvc" "$STATE/run" "$MNT"

start_daemon dirsvc "$BIN/dirsvc" --listen "$DIRSVC_ADDR" --db "$STATE/dirsvc/dirsvc.redb" \
    --addr-file "$STATE/run/dirsvc.addr" "${DIRSVC_FLAGS[@]}"
wait_addr dirsvc "$STATE/run/dirsvc.addr"
for i in $(seq 1 $PEERS); do
    mkdir -p "$STATE/peerd-$i"
    start_peer "$i"
done
deadline=$((SECONDS + 30))
until read_status; [[ $(field peers_up) == "$PEERS" ]]; do
    (( SECONDS < deadline )) || { echo "$STATUS" >&2; die "dirsvc does not list $PEERS peers up"; }
    sleep 0.2
done
"$BIN/fs-client" keygen -o "$IDENTITY" >/dev/null 2>&1
"$BIN/fs-client" init --dirsvc "$DIRSVC_ADDR" -i "$IDENTITY" --replicas $REPLICAS >/dev/null
mount_volume
say "cluster up: dirsvc $DIRSVC_ADDR, $PEERS peers, R = $REPLICAS, mounted at $MNT"

BIG=$STATE/big.bin
say "writing a $BIG_MIB MiB random file"
head -c $((BIG_MIB << 20)) /dev/urandom >"$BIG"
BIG_SUM=$(sha256sum "$BIG" | awk '{print $1}')
NFILES=$(find "$TREE" \( -type f -o -type l \) | wc -l)
(( NFILES >= 2000 )) || die "$TREE has only $NFILES files; the run needs at least 2,000"

# ---------------------------------------------------------------- chaos
# Kill -9 a random peer, keep it dead 1.5-3 s (past the 2 s down timeout),
# restart it, let it live 1-2.5 s; until the stop flag appears. Always
# restarts its victim before it checks the flag.
chaos_loop() {
    local victim pid n=0
    while [[ ! -e $STOP_FLAG ]]; do
        sleep "$(( 1 + RANDOM % 2 )).$(( RANDOM % 10 ))"
        [[ -e $STOP_FLAG ]] && break
        victim=$(( 1 + RANDOM % PEERS ))
        if pid=$(live_pid "peerd-$victim" peerd); then
            kill -KILL "$pid"
            while alive "$pid"; do sleep 0.02; done
            n=$((n + 1))
            echo "$victim" >>"$STATE/run/kills"
        fi
        sleep "$(( 1 + RANDOM % 2 )).$(( 5 + RANDOM % 5 ))"
        start_peer "$victim"
    done
}
rm -f "$STOP_FLAG" "$STATE/run/kills"
chaos_loop &
CHAOS_PID=$!

say "rsync -a of $TREE ($NFILES files) and the $BIG_MIB MiB file into the mount, under peer kills"
T_COPY=$(date +%s.%N)
timeout "$TIMEOUT" rsync -a "$TREE" "$BIG" "$MNT/" &
RSYNC_PID=$!
wait "$RSYNC_PID" || die "rsync failed or timed out (exit $?); see $STATE/logs"
RSYNC_PID=
COPY_S=$(elapsed "$T_COPY")
touch "$STOP_FLAG"
wait "$CHAOS_PID" || die "the chaos loop failed (exit $?)"
CHAOS_PID=
KILLS=$(wc -l <"$STATE/run/kills" 2>/dev/null || echo 0)
say "rsync done in ${COPY_S} s with $KILLS peer kills"

# ---------------------------------------------------------------- full redundancy, then lose two peers
wait_redundant() {
    local what=$1 deadline=$((SECONDS + TIMEOUT))
    until read_status; [[ $(field under_replicated) == 0 && $(field lost) == 0 && $(field repairs_in_flight) == 0 ]]; do
        (( SECONDS < deadline )) || { echo "$STATUS" >&2; die "$what: not fully replicated after $TIMEOUT s"; }
        sleep 0.2
    done
}
T=$(date +%s.%N)
wait_redundant "after the chaos"
say "all chunks at R = $REPLICAS $(elapsed "$T") s after the rsync"

read_status
BYTES0=$(field repaired_bytes_total)
COPIES0=$(field repaired_total)
a=$(( 1 + RANDOM % PEERS ))
b=$(( 1 + (a + RANDOM % (PEERS - 1)) % PEERS ))
T_LOSS=$(date +%s.%N)
stop "peerd-$a" peerd KILL 10
stop "peerd-$b" peerd KILL 10
say "removed peers $a and $b for good (kill -9)"
deadline=$((SECONDS + 60))
until read_status; down=$(field peers_down); [[ $down =~ ^[0-9]+$ ]] && (( down >= 2 )); do
    (( SECONDS < deadline )) || { echo "$STATUS" >&2; die "dirsvc does not count 2 peers down"; }
    sleep 0.1
done
DOWN_S=$(elapsed "$T_LOSS")
wait_redundant "after removing peers $a and $b"
FULL_S=$(elapsed "$T_LOSS")
read_status
BYTES=$(( $(field repaired_bytes_total) - BYTES0 ))
COPIES=$(( $(field repaired_total) - COPIES0 ))
say "under_replicated: 0 (lost: 0) ${FULL_S} s after the removal"

# ---------------------------------------------------------------- verify through a fresh mount
unmount_volume
mount_volume
T=$(date +%s.%N)
diff -r --no-dereference "$TREE" "$MNT/$(basename "$TREE")" || die "the tree differs"
DIFF_S=$(elapsed "$T")
T=$(date +%s.%N)
SUM=$(sha256sum "$MNT/big.bin" | awk '{print $1}')
SUM_S=$(elapsed "$T")
[[ $SUM == "$BIG_SUM" ]] || die "sha256 of big.bin differs: $SUM, want $BIG_SUM"
say "verified: diff -r clean (${DIFF_S} s), sha256 of the big file matches (${SUM_S} s)"

echo
echo "chaos run figures"
printf '  %-44s %s\n' "files copied (rsync -a)" "$NFILES + ${BIG_MIB} MiB"
printf '  %-44s %s s\n' "rsync under peer kills" "$COPY_S"
printf '  %-44s %s\n' "peer kills during the copy" "$KILLS"
printf '  %-44s %s s\n' "two peers removed -> both counted down" "$DOWN_S"
printf '  %-44s %s s\n' "two peers removed -> 0 under-replicated" "$FULL_S"
printf '  %-44s %s (%s MB)\n' "chunk copies by repair" "$COPIES" "$(awk -v b="$BYTES" 'BEGIN { printf "%.0f", b / 1e6 }')"
printf '  %-44s %s MB/s\n' "repair throughput (bytes / time to full)" \
    "$(awk -v b="$BYTES" -v t="$FULL_S" 'BEGIN { printf "%.0f", (t > 0 ? b / 1e6 / t : 0) }')"
printf '  %-44s %s MB/s\n' "repair throughput once both were down" \
    "$(awk -v b="$BYTES" -v t="$FULL_S" -v d="$DOWN_S" 'BEGIN { printf "%.0f", (t > d ? b / 1e6 / (t - d) : 0) }')"
printf '  %-44s %s MB/s\n' "cold read of the big file" \
    "$(awk -v m="$BIG_MIB" -v t="$SUM_S" 'BEGIN { printf "%.0f", (t > 0 ? m * 1.048576 / t : 0) }')"
