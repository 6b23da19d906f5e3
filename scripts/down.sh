#!/usr/bin/env bash
# Stops what scripts/up.sh started: unmounts (SIGTERM to fs-client, then a
# lazy unmount if the mount is still there), then stops the peers, dirsvc
# (or dirsvc-1..3) and the etcd members of P2PFS_META=etcd.
# Processes are found only by their PID files in $P2PFS_STATE/pids (and
# checked to run the expected binary), never by name. Harmless when nothing
# runs. Exits 1, naming the files, when the mount could not store all its
# data (kept in $P2PFS_STATE/recovery for the next up.sh).
#
# Usage: scripts/down.sh        (P2PFS_STATE as for up.sh [./.p2pfs])
set -euo pipefail

for a in "$@"; do
    case $a in
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "down.sh: takes no arguments (got $a); see --help" >&2; exit 2 ;;
    esac
done

STATE=${P2PFS_STATE:-./.p2pfs}
if [[ ! -d $STATE ]]; then
    echo "nothing to stop: no state dir $STATE"
    exit 0
fi
STATE=$(cd "$STATE" && pwd -P)
PIDS=$STATE/pids

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Stops the daemon of pids/NAME.pid: TERM, wait up to TIMEOUT s, then KILL.
# Removes the PID file in every case.
stop() {
    local name=$1 bin_name=$2 timeout=$3 pid deadline
    [[ -f $PIDS/$name.pid ]] || return 0
    if pid=$(live_pid "$name" "$bin_name"); then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + timeout))
        while alive "$pid" && (( SECONDS < deadline )); do sleep 0.1; done
        if alive "$pid"; then
            echo "$name (pid $pid) still runs after ${timeout} s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 5))
            while alive "$pid" && (( SECONDS < deadline )); do sleep 0.1; done
        fi
        echo "stopped $name (pid $pid)"
    else
        echo "$name was not running (stale PID file removed)"
    fi
    rm -f "$PIDS/$name.pid"
}

# 1. The client first: on SIGTERM it flushes and unmounts. What it could not
# store it keeps under $STATE/recovery and says so in its log.
# A mount left behind is detached only if this state dir's client made it
# (its PID file was there): a p2pfs mount of another cluster at the same
# path is not ours to remove.
log_mark=$(log_size fs-client)
ours=false
[[ -f $PIDS/fs-client.pid ]] && ours=true
stop fs-client fs-client 60
if $ours && [[ -f $STATE/mountpoint ]]; then
    mnt=$(<"$STATE/mountpoint")
    if [[ $(mount_type "$mnt") == fuse.p2pfs ]]; then
        echo "$mnt is still mounted: lazy unmount"
        umount -l "$mnt"
    fi
fi

# 2. Peers (all of them, whatever P2PFS_PEERS was), then dirsvc.
shopt -s nullglob
for f in "$PIDS"/peerd-*.pid; do
    name=${f##*/}
    stop "${name%.pid}" peerd 30
done
stop dirsvc dirsvc 30
for f in "$PIDS"/dirsvc-*.pid; do
    name=${f##*/}
    stop "${name%.pid}" dirsvc 30
done
# 3. etcd last: the dirsvc above needed it to shut down cleanly.
for f in "$PIDS"/etcd-*.pid; do
    name=${f##*/}
    stop "${name%.pid}" etcd 30
done
if pending=$(pending_recovery) && [[ -n $pending ]]; then
    echo "down.sh: the mount could not store all data it had buffered:" >&2
    notices fs-client "$log_mark" ||
        echo "down.sh: (no details in $STATE/logs/fs-client.log)" >&2
    echo "down.sh: $pending file(s) of unstored data are kept, sealed, in $STATE/recovery; the next scripts/up.sh stores them (free space on the peers first)" >&2
    echo "p2pfs is down, with unstored data kept (state in $STATE)"
    exit 1
fi
echo "p2pfs is down (state kept in $STATE)"
