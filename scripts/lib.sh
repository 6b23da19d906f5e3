# Shell helpers shared by up.sh, down.sh and chaos.sh (sourced, not run).
# The caller sets PIDS to its state's pids/ directory before calling them.

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
