#!/usr/bin/env bash
# A container engine for the kind path, on a machine that may not have one.
#   docker.sh ensure   install Debian's docker.io when `dockerd` is missing, start dockerd
#                      when no daemon answers; prints nothing else. Idempotent.
#   docker.sh stop     stop dockerd, only if `ensure` started it (a pid file says so).
# A developer with Docker Desktop or a CI runner with a daemon: `ensure` sees the daemon
# answer and does nothing, and `stop` leaves it alone.
set -euo pipefail

STATE=${PUSHTASK_CACHE_DIR:-$HOME/.cache/pushtask}/docker
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
# The Debian CLI: a different `docker` may come first on PATH (kind's wrapper, a static CLI).
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}

# A pid that still runs: a zombie (dockerd exited, its new parent has not reaped it yet)
# does not count.
alive() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat"; }

answers() { [ -n "$DOCKER" ] && timeout 10 "$DOCKER" info >/dev/null 2>&1; }

ensure() {
  answers && return 0
  if ! command -v dockerd >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "docker.sh: no Docker engine; install docker.io (needs root)" >&2; exit 1; }
    echo "docker.sh: installing Debian's docker.io" >&2
    # DPkg lock timeout: other setup scripts on the machine may be running apt too.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq docker.io >&2
    DOCKER=/usr/bin/docker
  fi
  [ "$(id -u)" = 0 ] || { echo "docker.sh: no daemon answers and starting dockerd needs root" >&2; exit 1; }
  mkdir -p "$STATE"
  echo "docker.sh: starting dockerd (log: $LOG)" >&2
  # No systemd on these machines: dockerd runs as our own background process, in its own
  # session so that a Ctrl-C in the calling terminal does not take it down mid-test.
  setsid dockerd >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq 60); do
    answers && return 0
    alive "$(cat "$PIDFILE")" || break
    sleep 0.5
  done
  echo "docker.sh: dockerd did not answer; last lines of $LOG:" >&2
  tail -20 "$LOG" >&2
  exit 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0   # not ours: leave it running
  pid=$(cat "$PIDFILE")
  if alive "$pid" && grep -q dockerd "/proc/$pid/comm" 2>/dev/null; then
    kill -TERM "$pid"
    # dockerd stops its containers first (10 s each at most); wait for it, then give up.
    for _ in $(seq 120); do alive "$pid" || break; sleep 0.5; done
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  ensure) ensure ;;
  stop) stop ;;
  *) echo "usage: $0 ensure|stop" >&2; exit 2 ;;
esac
