#!/usr/bin/env bash
# Side-by-side copy speed, same machine, same run, on a p2pfs mount
# (scripts/up.sh, its own state and ports) and a bindfs mount of a local
# directory (the FUSE passthrough ceiling): `cp` of one big file into and
# out of the mount (MB/s), and a tree of small files (P2PFS_BENCH_FILES
# files of 1-16 KiB in directories of 100) copied in with `cp -a`, read
# back with `tar` and removed with `rm -rf` (files/s). Caches are dropped
# before every read. Prints the figures and their ratio to bindfs.
#
# Usage: scripts/bench.sh [SIZE_MIB]     (default 1024; needs root and bindfs)
# Environment: P2PFS_BENCH_DIR parent of the scratch dir [/tmp];
#              P2PFS_PORT base port of the bench cluster [7800];
#              P2PFS_PEERS, P2PFS_REPLICAS as for up.sh [3, 2];
#              P2PFS_BENCH_FILES number of small files [2000];
#              P2PFS_BENCH_BINDFS_OPTS bindfs options ["--multithreaded -o direct_io":
#              measured here, plain bindfs writes at ~60-110 MB/s through the
#              page cache, direct_io at ~1 GB/s, the FUSE ceiling we compare to].
set -euo pipefail

die() { echo "bench.sh: $*" >&2; exit 1; }

SIZE_MIB=${1:-1024}
[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -gt 0 ]] || die "SIZE_MIB must be a positive number"
command -v bindfs >/dev/null || die "bindfs is missing (Debian: apt-get install bindfs)"
[[ $(id -u) -eq 0 ]] || die "run as root (FUSE mounts and drop_caches)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${P2PFS_BENCH_DIR:-/tmp}/p2pfs-bench.XXXXXX")
export P2PFS_STATE=$WORK/state
export P2PFS_PORT=${P2PFS_PORT:-7800}
P2P_MNT=$WORK/p2pfs
BIND_SRC=$WORK/bind-backing
BIND_MNT=$WORK/bindfs
mkdir -p "$BIND_SRC" "$BIND_MNT"

cleanup() {
    set +e
    if awk -v m="$BIND_MNT" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; then
        umount "$BIND_MNT" || umount -l "$BIND_MNT"
    fi
    "$ROOT/scripts/down.sh" >/dev/null
    # Never let rm walk into a mount that is still there.
    if awk -v w="$WORK/" 'index($2, w) == 1 { f = 1 } END { exit !f }' /proc/mounts; then
        echo "bench.sh: something is still mounted under $WORK; not removing it" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

drop_caches() {
    sync
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        echo "warning: cannot drop caches; reads may come from memory" >&2
    fi
}

now() { date +%s.%N; }
mbps() { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.0f", b / 1e6 / (t1 - t0) }'; }

"$ROOT/scripts/up.sh" "$P2P_MNT" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "up.sh failed"; }
read -r -a BINDFS_OPTS <<<"${P2PFS_BENCH_BINDFS_OPTS---multithreaded -o direct_io}"
bindfs "${BINDFS_OPTS[@]}" "$BIND_SRC" "$BIND_MNT"

SRC=$WORK/src.bin
BYTES=$((SIZE_MIB << 20))
echo "generating ${SIZE_MIB} MiB of random data ..."
head -c "$BYTES" /dev/urandom >"$SRC"
sync

declare -A WRITE READ
for sys in bindfs p2pfs; do
    mnt=$BIND_MNT
    [[ $sys == p2pfs ]] && mnt=$P2P_MNT
    drop_caches
    t0=$(now); cp "$SRC" "$mnt/big.bin"; t1=$(now)
    WRITE[$sys]=$(mbps "$BYTES" "$t0" "$t1")
    drop_caches
    t0=$(now); cp "$mnt/big.bin" "$WORK/out.bin"; t1=$(now)
    READ[$sys]=$(mbps "$BYTES" "$t0" "$t1")
    cmp -s "$SRC" "$WORK/out.bin" || die "$sys: the copy read back differs from the source"
    rm -f "$WORK/out.bin" "$mnt/big.bin"
done

FILES=${P2PFS_BENCH_FILES:-2000}
[[ $FILES =~ ^[0-9]+$ && $FILES -gt 0 ]] || die "P2PFS_BENCH_FILES must be a positive number"
TREE=$WORK/tree
echo "generating ${FILES} small files ..."
for ((i = 0; i < FILES; i++)); do
    d=$TREE/d$((i / 100))
    ((i % 100 == 0)) && mkdir -p "$d"
    head -c $((1024 + (i * 7919) % 15360)) "$SRC" >"$d/f$i"
done
sync
fps() { awk -v n="$1" -v t0="$2" -v t1="$3" 'BEGIN { printf "%.0f", n / (t1 - t0) }'; }
declare -A CREATE SCAN REMOVE
for sys in bindfs p2pfs; do
    mnt=$BIND_MNT
    [[ $sys == p2pfs ]] && mnt=$P2P_MNT
    drop_caches
    t0=$(now); cp -a "$TREE" "$mnt/tree"; sync -f "$mnt/tree"; t1=$(now)
    CREATE[$sys]=$(fps "$FILES" "$t0" "$t1")
    drop_caches
    t0=$(now); tar -C "$mnt" -cf - tree | sha256sum >"$WORK/$sys.tar.sha"; t1=$(now)
    SCAN[$sys]=$(fps "$FILES" "$t0" "$t1")
    diff -r -q "$TREE" "$mnt/tree" >/dev/null || die "$sys: the small files read back differ"
    t0=$(now); rm -rf "$mnt/tree"; t1=$(now)
    REMOVE[$sys]=$(fps "$FILES" "$t0" "$t1")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
echo
echo "cp of a ${SIZE_MIB} MiB file ($(nproc) cores; cold cache before each read)"
printf '%-8s %14s %14s %10s %10s\n' system "write MB/s" "read MB/s" "write ×" "read ×"
for sys in bindfs p2pfs; do
    printf '%-8s %14s %14s %10s %10s\n' "$sys" "${WRITE[$sys]}" "${READ[$sys]}" \
        "$(ratio "${WRITE[$sys]}" "${WRITE[bindfs]}")" "$(ratio "${READ[$sys]}" "${READ[bindfs]}")"
done
echo
echo "${FILES} files of 1-16 KiB: cp -a in (with sync), tar out (cold cache), rm -rf; files/s"
printf '%-8s %10s %10s %10s %9s %9s %9s\n' system create read remove "create ×" "read ×" "remove ×"
for sys in bindfs p2pfs; do
    printf '%-8s %10s %10s %10s %9s %9s %9s\n' "$sys" "${CREATE[$sys]}" "${SCAN[$sys]}" "${REMOVE[$sys]}" \
        "$(ratio "${CREATE[$sys]}" "${CREATE[bindfs]}")" "$(ratio "${SCAN[$sys]}" "${SCAN[bindfs]}")" \
        "$(ratio "${REMOVE[$sys]}" "${REMOVE[bindfs]}")"
done
echo "(× = ratio to bindfs ${BINDFS_OPTS[*]}, a FUSE passthrough of a local directory)"
