#!/usr/bin/env bash
# Installs p2pfs on this host: the binaries, the mount helper (so that
# `mount -t fuse.p2pfs` and /etc/fstab lines work), the systemd units, the
# example configs (never replacing a config you have) and the docs.
#
#   scripts/install.sh              # build (release) and install
#   scripts/install.sh --no-build   # install what target/release holds
#   scripts/install.sh --uninstall  # remove binaries, helper, units (configs and data stay)
#
# Where (environment): PREFIX (/usr/local: bin/, share/doc/p2pfs/),
# SBINDIR (/sbin: mount.fuse.p2pfs, where mount(8) looks for helpers),
# SYSCONFDIR (/etc: p2pfs/*.toml), UNITDIR (/etc/systemd/system).
# Needs root for the default places.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PREFIX=${PREFIX:-/usr/local}
SBINDIR=${SBINDIR:-/sbin}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
BINS=(dirsvc peerd fs-client)
HELPER=$SBINDIR/mount.fuse.p2pfs

build=1 uninstall=0
for a in "$@"; do
    case $a in
        --no-build) build=0 ;;
        --uninstall) uninstall=1 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
    esac
done

if (( uninstall )); then
    for b in "${BINS[@]}"; do rm -f "$PREFIX/bin/$b"; done
    rm -f "$HELPER"
    for u in dist/systemd/*.service; do rm -f "$UNITDIR/$(basename "$u")"; done
    rm -rf "$PREFIX/share/doc/p2pfs"
    echo "removed the binaries, $HELPER and the units; $SYSCONFDIR/p2pfs and the data stay"
    exit 0
fi

if (( build )); then
    cargo build --release --locked
fi
for b in "${BINS[@]}"; do
    [[ -x target/release/$b ]] || { echo "install.sh: target/release/$b is missing (run without --no-build)" >&2; exit 1; }
done

install -d "$PREFIX/bin" "$SBINDIR" "$SYSCONFDIR/p2pfs" "$PREFIX/share/doc/p2pfs"
for b in "${BINS[@]}"; do
    install -m 0755 "target/release/$b" "$PREFIX/bin/$b"
done
# mount(8) runs /sbin/mount.fuse.p2pfs for type fuse.p2pfs; fs-client acts
# as the helper under that name.
ln -sfn "$PREFIX/bin/fs-client" "$HELPER"

if [[ -d $(dirname "$UNITDIR") ]]; then
    install -d "$UNITDIR"
    for u in dist/systemd/*.service; do
        sed -e "s#/usr/local/bin/#$PREFIX/bin/#g" -e "s#/usr/local/share/#$PREFIX/share/#g" \
            -e "s#/etc/p2pfs/#$SYSCONFDIR/p2pfs/#g" "$u" >"$UNITDIR/$(basename "$u")"
        chmod 0644 "$UNITDIR/$(basename "$u")"
    done
fi

for c in dist/config/*.toml; do
    dest=$SYSCONFDIR/p2pfs/$(basename "$c")
    if [[ -e $dest ]]; then
        install -m 0644 "$c" "$dest.example"
    else
        install -m 0644 "$c" "$dest"
    fi
done
install -m 0644 README.md docs/*.md "$PREFIX/share/doc/p2pfs/"

# The daemons' unit files run them as user p2pfs.
if [[ $UNITDIR == /etc/systemd/system ]] && ! id p2pfs >/dev/null 2>&1 && command -v useradd >/dev/null; then
    useradd --system --home-dir /var/lib/p2pfs --no-create-home --shell /usr/sbin/nologin p2pfs
fi

cat <<MSG
installed: $PREFIX/bin/{dirsvc,peerd,fs-client}, $HELPER,
  units in $UNITDIR, configs in $SYSCONFDIR/p2pfs (existing ones kept; new examples as *.example),
  docs in $PREFIX/share/doc/p2pfs
next: edit $SYSCONFDIR/p2pfs/*.toml, then e.g.
  systemctl enable --now p2pfs-dirsvc p2pfs-peerd
  echo 'p2pfs /mnt/p2pfs fuse.p2pfs config=$SYSCONFDIR/p2pfs/client.toml,_netdev,nofail 0 0' >>/etc/fstab && mount /mnt/p2pfs
MSG
