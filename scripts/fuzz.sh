#!/usr/bin/env bash
# Long fuzzing passes with cargo-fuzz (libFuzzer, coverage-guided) over the
# targets of testkit::fuzz (testkit/src/fuzz/: every decoder of bytes from the network or a
# disk). Each target gets its own corpus under fuzz/corpus/<target>, seeded
# from the target's valid inputs; crashes, leaks, timeouts and single
# allocations over 64 MiB are saved under fuzz/artifacts/<target>/ and make
# the script exit 1 after the remaining targets ran. The short pass CI runs
# is `cargo test -p p2pfs-testkit --release --test fuzz` (100,000 cases
# each), part of the test suite (README).
#
# Usage:
#   scripts/fuzz.sh                    every target, P2PFS_FUZZ_SECONDS each
#   scripts/fuzz.sh TARGET...          those targets
#   scripts/fuzz.sh --list             the target names
#   scripts/fuzz.sh --replay TARGET FILE...
#                                      run saved inputs through TARGET once
#                                      (no cargo-fuzz needed: the CI harness)
#
# Environment (defaults in brackets):
#   P2PFS_FUZZ_SECONDS   time per target [60]
#   P2PFS_FUZZ_JOBS      libFuzzer processes per target [1]
#   P2PFS_FUZZ_SANITIZER address | none (none runs ~3x faster) [address]
#
# Stable Rust: cargo-fuzz passes -Z flags, which this script enables with
# RUSTC_BOOTSTRAP=1 for the fuzz build only. It installs cargo-fuzz
# (`cargo install cargo-fuzz`) if it is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECONDS_PER_TARGET=${P2PFS_FUZZ_SECONDS:-60}
JOBS=${P2PFS_FUZZ_JOBS:-1}
SANITIZER=${P2PFS_FUZZ_SANITIZER:-address}
MAX_LEN=1048576   # testkit::fuzz::MAX_INPUT

die() { echo "fuzz.sh: $*" >&2; exit 2; }

targets() {
    cargo run -q --release -p p2pfs-testkit --example fuzz-seeds -- --list
}

case "${1:-}" in
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --list) targets; exit 0 ;;
    --replay)
        [[ $# -ge 3 ]] || die "usage: scripts/fuzz.sh --replay TARGET FILE..."
        target=$2; shift 2
        status=0
        for f in "$@"; do
            echo "fuzz.sh: replaying $f through $target"
            P2PFS_FUZZ_ONLY=$target P2PFS_FUZZ_REPLAY=$(realpath "$f") \
                cargo test -q --release -p p2pfs-testkit --test fuzz -- --nocapture || status=1
        done
        exit $status ;;
esac

all=$(targets)
if [[ $# -gt 0 ]]; then
    for t in "$@"; do
        grep -qx -- "$t" <<<"$all" || die "unknown target $t (scripts/fuzz.sh --list)"
    done
    selected=("$@")
else
    mapfile -t selected <<<"$all"
fi

CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
export PATH=$CARGO_BIN:$PATH
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# Seeds (valid inputs of each target) into the corpora; libFuzzer keeps
# what it finds there too.
cargo run -q --release -p p2pfs-testkit --example fuzz-seeds -- fuzz/corpus

export RUSTC_BOOTSTRAP=1
cargo fuzz build --fuzz-dir fuzz --sanitizer "$SANITIZER" p2pfs

# With more than one job libFuzzer writes each job's log to fuzz-<n>.log in
# the current directory (ignored by git).
parallel=()
if (( JOBS > 1 )); then
    parallel=(-jobs="$JOBS" -workers="$JOBS")
fi

failed=()
for t in "${selected[@]}"; do
    mkdir -p "fuzz/artifacts/$t"
    echo "fuzz.sh: $t for ${SECONDS_PER_TARGET}s"
    if ! P2PFS_FUZZ_TARGET=$t cargo fuzz run --fuzz-dir fuzz --sanitizer "$SANITIZER" p2pfs "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len="$MAX_LEN" -malloc_limit_mb=64 -rss_limit_mb=2048 \
        -timeout=10 "${parallel[@]}" -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1; then
        failed+=("$t")
    fi
done

if (( ${#failed[@]} )); then
    echo "fuzz.sh: failures in: ${failed[*]} (inputs in fuzz/artifacts/<target>/; replay with" \
        "scripts/fuzz.sh --replay TARGET FILE)" >&2
    exit 1
fi
echo "fuzz.sh: ${#selected[@]} targets, ${SECONDS_PER_TARGET}s each, nothing found"
