# Shell helpers shared by up.sh, down.sh and chaos.sh (sourced, not run).
# The caller sets STATE to its state directory and PIDS to its pids/
# directory before calling them.

# Whether PID is a running (not zombie) process.
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# The pid in $PIDS/NAME.pid if it is a live process running binary
# BIN_NAME: a stale PID file, or one whose number now belongs to another
# program, yields nothing, so callers only ever signal their own daemons.
live_pid() {
    local name=$1 bin_name=$2 pid exe
    [[ -f $PIDS/$name.pid ]] || return 1
    pid=$(<"$PIDS/$name.pid")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    exe=${exe% (deleted)}
    [[ ${exe##*/} == "$bin_name" ]] || return 1
    alive "$pid" || return 1
    echo "$pid"
}

# The size in bytes of logs/NAME.log (0 if there is none yet): a mark from
# which `notices` reads what the daemon writes next.
log_size() {
    stat -c %s "$STATE/logs/$1.log" 2>/dev/null || echo 0
}

# Prints, to stderr, the lines fs-client wrote for a person to read (they
# start with "fs-client: ") in logs/NAME.log after byte MARK. Returns 0 if
# there were any.
notices() {
    local name=$1 mark=$2 lines
    lines=$(tail -c +$((mark + 1)) "$STATE/logs/$name.log" 2>/dev/null | grep -a '^fs-client: ') || return 1
    printf '%s\n' "$lines" >&2
}

# The number of recovery files (data a mount could not store, kept for the
# next one) waiting under $STATE/recovery; prints nothing if there are none.
pending_recovery() {
    local n
    n=$(find "$STATE/recovery" -name '*.p2pr' -type f 2>/dev/null | wc -l)
    (( n > 0 )) && echo "$n"
    return 0
}

# The /proc/mounts form of a path (octal escapes for space, tab, newline, \).
mounts_escape() {
    local s=$1
    s=${s//\\/\\134}; s=${s// /\\040}; s=${s//$'\t'/\\011}; s=${s//$'\n'/\\012}
    printf '%s' "$s"
}

# The fstype mounted at path $1 per /proc/mounts, or nothing. A plain `fuse`
# mount whose source is p2pfs counts as fuse.p2pfs (fuser drops the subtype
# on its mount(2) path).
mount_type() {
    M="$(mounts_escape "$1")" awk '$2 == ENVIRON["M"] { t = $3; if (t == "fuse" && $1 == "p2pfs") t = "fuse.p2pfs" } END { if (t) print t }' /proc/mounts
}
