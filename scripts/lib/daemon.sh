# Sourced by the scripts that run a knowd daemon for a while (demo, bench, label-fixture); needs
# $knowd (the knowd binary).
#
#   start_daemon NAME BUNDLE [SERVE ARGS...]
#     makes a scratch directory $work (removed at exit, the daemon killed if it is still up), starts
#     `knowd serve` on BUNDLE with a data directory in it on a free loopback port, waits up to 60 s
#     for the model to load, and sets $daemon_pid, $daemon_line (its "listening on" line) and
#     exports KNOWCTL_SERVER.
#   stop_daemon
#     SIGTERM, then waits for the daemon to drain and exit; sets $daemon_status.

start_daemon() {
  local name=$1 bundle=$2
  shift 2
  work=$(mktemp -d "${TMPDIR:-/tmp}/knowd-$name.XXXXXX")
  daemon_pid=""
  trap daemon_cleanup EXIT
  "$knowd" serve --model "$bundle" --data-dir "$work/data" --listen 127.0.0.1:0 "$@" \
    >"$work/stdout" 2>"$work/stderr" &
  daemon_pid=$!
  for _ in $(seq 600); do
    grep -qs "listening on" "$work/stdout" && break
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/stderr"; exit 1; }
    sleep 0.1
  done
  daemon_line=$(grep "listening on" "$work/stdout") ||
    { echo "knowd did not start"; cat "$work/stderr"; exit 1; }
  KNOWCTL_SERVER=$(sed -E 's/.*listening on ([^ ]+) \(grpc\).*/\1/' <<<"$daemon_line")
  export KNOWCTL_SERVER
}

stop_daemon() {
  kill -TERM "$daemon_pid"
  daemon_status=0
  wait "$daemon_pid" || daemon_status=$?
  daemon_pid=""
}

daemon_cleanup() {
  if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then kill -9 "$daemon_pid"; fi
  rm -rf "$work"
}
