#!/usr/bin/env bash
# Brings up a local p2pfs cluster (dirsvc + N peers on loopback) and mounts
# the volume at MOUNTPOINT. Idempotent: what already runs is left alone.
# With P2PFS_META=etcd: a 3-member etcd cluster and 3 dirsvc (one leads, by
# election) instead of one dirsvc on a redb file.
#
# Usage: scripts/up.sh MOUNTPOINT
#
# Environment (defaults in brackets):
#   P2PFS_STATE     state dir: pids/, logs/, dirsvc/, peerd-N/, identity.txt [./.p2pfs]
#   P2PFS_META      where dirsvc keeps the metadata: redb (one dirsvc, one
#                   file) or etcd (etcd-1..3 and dirsvc-1..3) [redb]
#   P2PFS_PORT      dirsvc port; peers use PORT+1..PORT+N [7700]; with etcd,
#                   dirsvc-2,3 use PORT+N+1,2, etcd clients PORT+N+11..13,
#                   etcd peers PORT+N+21..23, etcd metrics PORT+N+31..33
#   P2PFS_PEERS     number of peers N [3]
#   P2PFS_REPLICAS  replicas R for a new volume [2]
#   CARGO_TARGET_DIR  where cargo puts binaries [<repo>/target]
#   P2PFS_BIN       directory with dirsvc, peerd and fs-client to use as they
#                   are, without building [$CARGO_TARGET_DIR/release]
# Each daemon and the mount serve Prometheus metrics on 127.0.0.1 (a free
# port, written to $P2PFS_STATE/run/<name>.metrics); dirsvc's address also
# serves the status page (printed at the end).
# Data the mount could not store by its unmount (peers full or unreachable)
# is kept, sealed, in $P2PFS_STATE/recovery and stored by the next up.sh.
# Stop everything with scripts/down.sh (same P2PFS_STATE).
set -euo pipefail

die() { echo "up.sh: $*" >&2; exit 1; }

[[ $# -eq 1 && $1 != -h && $1 != --help ]] || {
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${P2PFS_PORT:-7700}
PEERS=${P2PFS_PEERS:-3}
REPLICAS=${P2PFS_REPLICAS:-2}
for v in PORT PEERS REPLICAS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "P2PFS_$v must be a number, got '${!v}'"
done
(( PEERS >= 1 )) || die "P2PFS_PEERS must be at least 1"
(( PORT + PEERS <= 65535 )) || die "P2PFS_PORT + P2PFS_PEERS exceeds 65535"
META=${P2PFS_META:-redb}
[[ $META == redb || $META == etcd ]] || die "P2PFS_META must be redb or etcd, got '$META'"
if [[ $META == etcd ]]; then
    (( PORT + PEERS + 33 <= 65535 )) || die "P2PFS_PORT + P2PFS_PEERS + 33 exceeds 65535"
    ETCD_BIN=$(command -v etcd) || die "P2PFS_META=etcd needs etcd (Debian: apt-get install etcd-server)"
fi

STATE=${P2PFS_STATE:-./.p2pfs}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd -P)
# Only root (the owner) may enter: it holds keys, dirsvc's database (tree
# shape, sizes, wrapped volume keys) and logs that name paths in clear.
chmod 700 "$STATE"
mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/dirsvc" "$STATE/run"
# One volume per state dir: its peers (peerd-N/) hold that volume's chunks,
# and a second volume on them would take those for orphans and delete them.
# So the engine a state dir was made with is the only one it runs.
if [[ -f $STATE/meta ]]; then
    made=$(<"$STATE/meta")
elif [[ -e $STATE/dirsvc/dirsvc.redb ]]; then
    made=redb
elif [[ -d $STATE/etcd-1 ]]; then
    made=etcd
else
    made=$META
fi
[[ $made == "$META" ]] ||
    die "$STATE holds a volume on $made; P2PFS_META=$META would make a second volume on its peers," \
        "whose garbage collection would delete the first one's chunks. Run with P2PFS_META=$made," \
        "or give the $META cluster its own P2PFS_STATE (to move the volume: dirsvc migrate, docs/OPERATIONS.md)"
echo "$META" >"$STATE/meta"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$PWD/$TARGET
BIN=${P2PFS_BIN:-$TARGET/release}
DIRSVC_ADDR=127.0.0.1:$PORT
if [[ $META == etcd ]]; then
    # Every peer and the mount get all three; they follow the leader.
    dirsvc_port() { if (( $1 == 1 )); then echo "$PORT"; else echo $((PORT + PEERS + $1 - 1)); fi; }
    etcd_client_port() { echo $((PORT + PEERS + 10 + $1)); }
    etcd_peer_port() { echo $((PORT + PEERS + 20 + $1)); }
    etcd_metrics_port() { echo $((PORT + PEERS + 30 + $1)); }
    DIRSVC_ADDR=127.0.0.1:$(dirsvc_port 1),127.0.0.1:$(dirsvc_port 2),127.0.0.1:$(dirsvc_port 3)
    ETCD_ENDPOINTS=127.0.0.1:$(etcd_client_port 1),127.0.0.1:$(etcd_client_port 2),127.0.0.1:$(etcd_client_port 3)
fi
IDENTITY=$STATE/identity.txt

MNT=$(realpath -m -- "$1")

# ---------------------------------------------------------------- build
needs_build() {
    local b
    for b in dirsvc peerd fs-client; do
        [[ -x $BIN/$b ]] || return 0
        if [[ -n $(find "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$ROOT/common" "$ROOT/dirsvc" \
                        "$ROOT/peerd" "$ROOT/fs-client" \
                        \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) \
                        -newer "$BIN/$b" -print -quit 2>/dev/null) ]]; then
            return 0
        fi
    done
    return 1
}
if [[ -z ${P2PFS_BIN:-} ]] && needs_build; then
    echo "building release binaries into $BIN ..."
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --workspace)
fi

# ---------------------------------------------------------------- helpers
PIDS=$STATE/pids
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The mountpoint first, before anything starts: another kind of mount there
# is refused, and so is a p2pfs mount this state dir did not make (its own,
# live or left by a dead client, is dealt with below).
mtype=$(mount_type "$MNT")
[[ -z $mtype || $mtype == fuse.p2pfs ]] || die "$MNT is already a $mtype mount"
if [[ $mtype == fuse.p2pfs && $(cat "$STATE/mountpoint" 2>/dev/null) != "$MNT" ]]; then
    die "$MNT is a p2pfs mount this state dir ($STATE) did not make; unmount it or choose another mountpoint"
fi

# Prints the last lines of a log, for a failed start (backtrace frames left
# out, so the error itself stays in view).
show_log() {
    echo "---- last lines of $1 (backtrace frames omitted) ----" >&2
    awk '/^Stack backtrace:/ { skip = 1; next } skip && /^[[:space:]]/ { next } { skip = 0; print }' \
        "$1" 2>/dev/null | tail -n 30 >&2 || true
}

# Starts BIN with ARGS in its own session, pid in pids/NAME.pid, output
# appended to logs/NAME.log.
start_daemon() {
    local name=$1 bin=$2
    shift 2
    # No job control here, so the background job is not a group leader and
    # setsid execs in place: $! is the daemon's own pid.
    nohup setsid "$bin" "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/$name.pid"
}

# Sends TERM to a pid we started, waits up to 10 s, then KILL.
stop_pid() {
    local pid=$1 deadline=$((SECONDS + 10))
    kill -TERM "$pid" 2>/dev/null || return 0
    while alive "$pid" && (( SECONDS < deadline )); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

# Waits (bounded) for a freshly started daemon to write its address file.
wait_addr() {
    local name=$1 file=$2 deadline=$((SECONDS + 30)) pid
    pid=$(<"$STATE/pids/$name.pid")
    until [[ -s $file ]]; do
        if ! alive "$pid"; then
            show_log "$STATE/logs/$name.log"
            die "$name (pid $pid) exited during start-up"
        fi
        if (( SECONDS >= deadline )); then
            show_log "$STATE/logs/$name.log"
            die "$name (pid $pid) did not become ready within 30 s"
        fi
        sleep 0.1
    done
}

# ---------------------------------------------------------------- identity
# The cluster's CA and a certificate for every daemon, the mount and the
# commands (mutual TLS everywhere). Made once; never replaced.
CA=$STATE/ca
issue() {
    local role=$1 out=$2
    [[ -f $out/node.crt ]] ||
        "$BIN/fs-client" ca issue --ca-dir "$CA" --role "$role" --out "$out" >/dev/null
}
if [[ ! -f $CA/ca.crt ]]; then
    "$BIN/fs-client" ca init --dir "$CA" --name "$(hostname 2>/dev/null || echo local)" >/dev/null
    echo "created the cluster CA in $CA (keep ca.key private: it admits nodes)"
fi
issue dirsvc "$STATE/dirsvc/tls"
if [[ $META == etcd ]]; then
    # etcd members present dirsvc certificates of the cluster CA on their
    # client ports (dirsvc's etcd engine checks the role, not a host name)
    # and demand a client certificate of that CA; each dirsvc has its own.
    for i in 1 2 3; do
        issue dirsvc "$STATE/etcd-$i/tls"
        issue dirsvc "$STATE/dirsvc-$i/tls"
    done
fi
for i in $(seq 1 "$PEERS"); do
    if [[ -f $STATE/peerd-$i/peer-id && ! -f $STATE/peerd-$i/tls/node.crt ]]; then
        die "$STATE/peerd-$i holds the data of a peer from before certificates; its chunks are indexed under its old id and cannot move to a certificate's id: start a new state directory (P2PFS_STATE) and copy your files over"
    fi
    issue peer "$STATE/peerd-$i/tls"
done
issue client "$STATE/client-tls"
issue admin "$STATE/admin-tls"
# The commands below act as the admin; the mount as the client.
export P2PFS_TLS_DIR=$STATE/admin-tls

# ---------------------------------------------------------------- etcd
# Whether the etcd member with metrics port $1 reports itself healthy.
etcd_healthy() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/health" 2>/dev/null | grep -q '"health":"true"'
}
if [[ $META == etcd ]]; then
    cluster=
    for i in 1 2 3; do
        cluster+=${cluster:+,}etcd-$i=http://127.0.0.1:$(etcd_peer_port "$i")
    done
    for i in 1 2 3; do
        name=etcd-$i
        if pid=$(live_pid "$name" etcd); then
            echo "$name already running (pid $pid)"
            continue
        fi
        mkdir -p "$STATE/$name"
        client=https://127.0.0.1:$(etcd_client_port "$i")
        peer=http://127.0.0.1:$(etcd_peer_port "$i")
        # Peer traffic is plain HTTP on loopback: etcd 3.4 checks a peer's
        # certificate against its IP or DNS name, which p2pfs certificates
        # do not carry (docs/OPERATIONS.md).
        start_daemon "$name" "$ETCD_BIN" --name "$name" --data-dir "$STATE/$name/data" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --listen-metrics-urls "http://127.0.0.1:$(etcd_metrics_port "$i")" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token p2pfs-local \
            --cert-file "$STATE/$name/tls/node.crt" --key-file "$STATE/$name/tls/node.key" \
            --trusted-ca-file "$STATE/$name/tls/ca.crt" --client-cert-auth \
            --auto-compaction-mode periodic --auto-compaction-retention 1h \
            --quota-backend-bytes $((8 << 30)) --logger zap --log-outputs stderr
        echo "127.0.0.1:$(etcd_client_port "$i")" >"$STATE/run/$name.addr"
    done
    # A member is healthy once the cluster has a leader (a quorum runs).
    for i in 1 2 3; do
        deadline=$((SECONDS + 30))
        pid=$(<"$STATE/pids/etcd-$i.pid")
        until etcd_healthy "$(etcd_metrics_port "$i")"; do
            if ! alive "$pid"; then
                show_log "$STATE/logs/etcd-$i.log"
                die "etcd-$i (pid $pid) exited during start-up"
            fi
            if (( SECONDS >= deadline )); then
                show_log "$STATE/logs/etcd-$i.log"
                die "etcd-$i (pid $pid) is not healthy after 30 s"
            fi
            sleep 0.2
        done
    done
fi

# ---------------------------------------------------------------- dirsvc
if [[ $META == etcd ]]; then
    for i in 1 2 3; do
        name=dirsvc-$i
        if pid=$(live_pid "$name" dirsvc); then
            echo "$name already running (pid $pid)"
            continue
        fi
        rm -f "$STATE/run/$name.addr" "$STATE/run/$name.metrics"
        start_daemon "$name" "$BIN/dirsvc" --meta etcd --etcd-endpoints "$ETCD_ENDPOINTS" \
            --listen "127.0.0.1:$(dirsvc_port "$i")" \
            --addr-file "$STATE/run/$name.addr" \
            --metrics-addr 127.0.0.1:0 --metrics-addr-file "$STATE/run/$name.metrics" \
            --tls-dir "$STATE/$name/tls" --ca-dir "$CA"
    done
    for i in 1 2 3; do
        wait_addr "dirsvc-$i" "$STATE/run/dirsvc-$i.addr"
    done
elif pid=$(live_pid dirsvc dirsvc); then
    echo "dirsvc already running (pid $pid)"
else
    rm -f "$STATE/run/dirsvc.addr" "$STATE/run/dirsvc.metrics"
    start_daemon dirsvc "$BIN/dirsvc" \
        --listen "$DIRSVC_ADDR" --db "$STATE/dirsvc/dirsvc.redb" \
        --addr-file "$STATE/run/dirsvc.addr" \
        --metrics-addr 127.0.0.1:0 --metrics-addr-file "$STATE/run/dirsvc.metrics" \
        --tls-dir "$STATE/dirsvc/tls" --ca-dir "$CA"
    wait_addr dirsvc "$STATE/run/dirsvc.addr"
fi

# ---------------------------------------------------------------- peers
for i in $(seq 1 "$PEERS"); do
    name=peerd-$i
    addr=127.0.0.1:$((PORT + i))
    mkdir -p "$STATE/$name"
    if pid=$(live_pid "$name" peerd); then
        echo "$name already running (pid $pid)"
        continue
    fi
    rm -f "$STATE/run/$name.addr" "$STATE/run/$name.metrics"
    start_daemon "$name" "$BIN/peerd" \
        --listen "$addr" --data-dir "$STATE/$name" --dirsvc "$DIRSVC_ADDR" \
        --addr-file "$STATE/run/$name.addr" \
        --metrics-addr 127.0.0.1:0 --metrics-addr-file "$STATE/run/$name.metrics"
    wait_addr "$name" "$STATE/run/$name.addr"
done

# Peers register on start; wait until dirsvc lists them all as live (a
# peer drained with `fs-client drain` stays drained: it heartbeats but takes
# no new chunks, and counts here).
deadline=$((SECONDS + 30))
until (( $("$BIN/fs-client" peers --dirsvc "$DIRSVC_ADDR" 2>/dev/null | grep -cwE "live|up|draining|drained" || true) >= PEERS )); do
    if (( SECONDS >= deadline )); then
        "$BIN/fs-client" peers --dirsvc "$DIRSVC_ADDR" >&2 || true
        show_log "$STATE/logs/dirsvc.log"
        die "dirsvc does not list $PEERS live peers after 30 s"
    fi
    sleep 0.2
done

# ---------------------------------------------------------------- volume
# A missing identity is generated only while dirsvc has no volume: a new key
# cannot open an existing volume, and would stand where the real one belongs.
if [[ ! -e $IDENTITY ]]; then
    volume=$("$BIN/fs-client" volume --dirsvc "$DIRSVC_ADDR") ||
        die "cannot ask dirsvc at $DIRSVC_ADDR whether a volume exists; not generating $IDENTITY"
    if grep -q '^volume: ' <<<"$volume"; then
        recipients=
        while read -r r; do
            recipients+=${recipients:+, }$r
        done < <(sed -n 's/^recipient: //p' <<<"$volume")
        [[ -n $recipients ]] ||
            recipients="a key dirsvc does not record (the volume predates recorded recipients)"
        die "the volume exists and is wrapped to $recipients; restore $IDENTITY from your backup" \
            "(a new key cannot open it; \`$BIN/fs-client volume --dirsvc $DIRSVC_ADDR\` shows the volume)"
    fi
    "$BIN/fs-client" keygen -o "$IDENTITY" >/dev/null
    echo "generated identity $IDENTITY"
fi
"$BIN/fs-client" init --dirsvc "$DIRSVC_ADDR" -i "$IDENTITY" --replicas "$REPLICAS" --if-missing \
    --pin-dir "$STATE/pins"

# ---------------------------------------------------------------- mount
client_pid=$(live_pid fs-client fs-client || true)
if [[ -n $client_pid && -f $STATE/mountpoint ]]; then
    old_mnt=$(<"$STATE/mountpoint")
    if [[ $old_mnt != "$MNT" && $(mount_type "$old_mnt") == fuse.p2pfs ]]; then
        die "this cluster is already mounted at $old_mnt (fs-client pid $client_pid); run scripts/down.sh first to mount it elsewhere"
    fi
fi
echo "$MNT" >"$STATE/mountpoint"
mtype=$(mount_type "$MNT")
if [[ $mtype == fuse.p2pfs ]] && timeout 10 stat -f -- "$MNT" >/dev/null 2>&1; then
    echo "$MNT already mounted (fs-client pid ${client_pid:-not started by up.sh})"
else
    # A client without a working mount is stuck; it is ours (checked by pid
    # file and binary), so stop it.
    [[ -z $client_pid ]] || stop_pid "$client_pid"
    # A mount whose daemon is gone: detach it so the path is usable.
    [[ -z $mtype ]] || umount -l "$MNT"
    mkdir -p "$MNT"
    log_mark=$(log_size fs-client)
    rm -f "$STATE/run/mount.metrics"
    start_daemon fs-client "$BIN/fs-client" --tls-dir "$STATE/client-tls" \
        mount --dirsvc "$DIRSVC_ADDR" -i "$IDENTITY" --recovery-dir "$STATE/recovery" \
        --pin-dir "$STATE/pins" \
        --metrics-addr 127.0.0.1:0 --metrics-addr-file "$STATE/run/mount.metrics" "$MNT"
    pid=$(<"$STATE/pids/fs-client.pid")
    deadline=$((SECONDS + 30))
    until [[ $(mount_type "$MNT") == fuse.p2pfs ]]; do
        if ! alive "$pid"; then
            show_log "$STATE/logs/fs-client.log"
            die "fs-client (pid $pid) exited before $MNT was mounted"
        fi
        if (( SECONDS >= deadline )); then
            show_log "$STATE/logs/fs-client.log"
            die "$MNT did not appear as a fuse.p2pfs mount within 30 s"
        fi
        sleep 0.1
    done
    # What the mount said about data an earlier mount could not store
    # (stored now, or still waiting).
    notices fs-client "$log_mark" || true
fi
if pending=$(pending_recovery) && [[ -n $pending ]]; then
    echo "up.sh: $pending file(s) of data kept by an earlier mount are not stored yet; the mount retries them (see $STATE/logs/fs-client.log)" >&2
fi

# ---------------------------------------------------------------- summary
echo
echo "p2pfs is up (state in $STATE)"
if [[ $META == etcd ]]; then
    for i in 1 2 3; do
        printf '  %-10s pid %-8s %s (peers: 127.0.0.1:%s, plain)\n' "etcd-$i" "$(live_pid "etcd-$i" etcd || echo '?')" \
            "https://127.0.0.1:$(etcd_client_port "$i")" "$(etcd_peer_port "$i")"
    done
    for i in 1 2 3; do
        printf '  %-10s pid %-8s %s\n' "dirsvc-$i" "$(live_pid "dirsvc-$i" dirsvc || echo '?')" \
            "127.0.0.1:$(dirsvc_port "$i")"
    done
    echo "  meta:     etcd (one dirsvc leads by election; the others redirect)"
else
    printf '  %-10s pid %-8s %s\n' dirsvc "$(live_pid dirsvc dirsvc || echo '?')" "$DIRSVC_ADDR"
fi
for i in $(seq 1 "$PEERS"); do
    printf '  %-10s pid %-8s %s\n' "peerd-$i" "$(live_pid "peerd-$i" peerd || echo '?')" "127.0.0.1:$((PORT + i))"
done
printf '  %-10s pid %-8s %s\n' fs-client "$(live_pid fs-client fs-client || echo '?')" "$MNT"
echo "  metrics:  http://HOST:PORT/metrics, HOST:PORT in $STATE/run/*.metrics"
echo "  logs:     $STATE/logs/"
echo "  identity: $IDENTITY"
echo "  admin:    P2PFS_STATE=$STATE $BIN/fs-client status --dirsvc $DIRSVC_ADDR"
echo "  CA:       $CA (ca.key admits nodes: keep it private)"
if [[ $META == etcd ]]; then
    for i in 1 2 3; do
        [[ -s $STATE/run/dirsvc-$i.metrics ]] && echo "status page (dirsvc-$i): http://$(<"$STATE/run/dirsvc-$i.metrics")/"
    done
elif [[ -s $STATE/run/dirsvc.metrics ]]; then
    echo "status page: http://$(<"$STATE/run/dirsvc.metrics")/"
else
    echo "status page: not served (dirsvc was started without --metrics-addr; restart it with down.sh and up.sh)"
fi
echo "Stop with: P2PFS_STATE=$STATE $ROOT/scripts/down.sh"
