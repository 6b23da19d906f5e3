#!/usr/bin/env bash
# Metadata speed of one p2pfs cluster (scripts/up.sh, its own state and
# ports), one run: creates per second (`touch` of empty files), `tar x` of
# P2PFS_BENCH_FILES small files (64 B-64 KiB, 100 per directory) + sync in
# files per second, a cold `find -ls` of that tree (stats per second, after
# a remount-free cache drop), and a 1 GiB write of random bytes (`dd
# bs=1M conv=fsync` from a file in the scratch dir, MB/s; zeros would be
# holes, never stored). Prints one line per figure and, with --tsv, a
# tab-separated summary line (label, creates/s, untar files/s, stats/s,
# write MB/s).
#
# Usage: scripts/bench-meta.sh [--tsv] [LABEL]
# Environment: P2PFS_BIN binaries to run (default: build as up.sh does);
#              P2PFS_META metadata engine as for up.sh [redb];
#              P2PFS_BENCH_DIR parent of the scratch dir [/tmp];
#              P2PFS_PORT base port [7900]; P2PFS_PEERS, P2PFS_REPLICAS [3, 3];
#              P2PFS_BENCH_FILES small files [5000]; P2PFS_BENCH_CREATES [2000];
#              P2PFS_BENCH_WRITE_MIB [1024].
set -euo pipefail

die() { echo "bench-meta.sh: $*" >&2; exit 1; }
TSV=0
if [[ ${1:-} == --tsv ]]; then TSV=1; shift; fi
LABEL=${1:-p2pfs}
[[ $(id -u) -eq 0 ]] || die "run as root (FUSE mounts and drop_caches)"

FILES=${P2PFS_BENCH_FILES:-5000}
CREATES=${P2PFS_BENCH_CREATES:-2000}
WRITE_MIB=${P2PFS_BENCH_WRITE_MIB:-1024}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${P2PFS_BENCH_DIR:-/tmp}/p2pfs-bench-meta.XXXXXX")
export P2PFS_STATE=$WORK/state
export P2PFS_PORT=${P2PFS_PORT:-7900}
export P2PFS_PEERS=${P2PFS_PEERS:-3}
export P2PFS_REPLICAS=${P2PFS_REPLICAS:-3}
MNT=$WORK/mnt

cleanup() {
    set +e
    "$ROOT/scripts/down.sh" >/dev/null
    if awk -v w="$WORK/" 'index($2, w) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        echo "bench-meta.sh: something is still mounted under $WORK; not removing it" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
rate() { awk -v n="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.0f", n / (t1 - t0) }'; }

# The input tree: FILES files of 64 B-64 KiB (sizes from a fixed seed),
# 100 per directory, in a tar archive on local disk.
mkdir -p "$WORK/src"
python3 - "$WORK/src" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    size = int(64 * (1024 ** rng.random()))  # 64 B .. 64 KiB, log-uniform
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(rng.randbytes(size))
EOF
tar -C "$WORK/src" -cf "$WORK/tree.tar" .
# The write's input: random bytes (zeros would be holes, never stored).
head -c "$((WRITE_MIB * 1048576))" /dev/urandom >"$WORK/big.src"

"$ROOT/scripts/up.sh" "$MNT" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "up.sh failed"; }

mkdir "$MNT/creates"
t0=$(now)
(cd "$MNT/creates" && for ((i = 0; i < CREATES; i++)); do : >"c$i"; done)
t1=$(now)
creates=$(rate "$CREATES" "$t0" "$t1")
echo "$LABEL creates/s: $creates"

mkdir "$MNT/tree"
t0=$(now)
tar -C "$MNT/tree" -xf "$WORK/tree.tar"
sync
t1=$(now)
untar=$(rate "$FILES" "$t0" "$t1")
echo "$LABEL untar files/s: $untar"

drop_caches
entries=$(find "$MNT/tree" | wc -l)
t0=$(now)
find "$MNT/tree" -ls >/dev/null
t1=$(now)
stats=$(rate "$entries" "$t0" "$t1")
echo "$LABEL cold find -ls stats/s: $stats ($entries entries)"

t0=$(now)
dd if="$WORK/big.src" of="$MNT/big" bs=1M count="$WRITE_MIB" conv=fsync status=none
t1=$(now)
write=$(awk -v b="$((WRITE_MIB * 1048576))" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.0f", b / 1e6 / (t1 - t0) }')
echo "$LABEL write MB/s: $write"

if ((TSV)); then
    printf '%s\t%s\t%s\t%s\t%s\n' "$LABEL" "$creates" "$untar" "$stats" "$write"
fi
