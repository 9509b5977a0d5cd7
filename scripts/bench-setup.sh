#!/usr/bin/env bash
# What `make bench` needs beyond `make setup`: redis-server (the Celery baseline's broker,
# from Debian's packages; the benchmark starts and stops its own instance on a free loopback
# port, so no system service is wanted) and the `bench` extra (Celery + redis-py) in the
# venv. Kept out of `dev`: only the benchmark's Celery baseline uses them. Idempotent.
set -euo pipefail
venv="${1:-.venv}"

if ! command -v redis-server >/dev/null; then
  echo "[bench-setup] installing redis-server from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi

if ! "$venv/bin/python" -c 'import celery, redis, matplotlib' 2>/dev/null; then
  echo "[bench-setup] installing the bench extra (celery[redis], matplotlib) into $venv"
  "$venv/bin/python" -m pip install -q -e '.[bench]'
fi
echo "[bench-setup] redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2)," \
  "celery $("$venv/bin/python" -c 'import celery; print(celery.__version__)')"
