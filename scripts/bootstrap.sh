#!/usr/bin/env bash
# Set up a fresh machine for PushTask: system packages the devstack builds need (only those
# missing), then the Python environment. Idempotent; everything downloaded is cached under
# ~/.cache (pip) or comes from the machine's package manager.
set -euo pipefail
venv="${1:-.venv}"

need=()
command -v go    >/dev/null || need+=(golang-go)
command -v java  >/dev/null || need+=(default-jdk-headless)
command -v javac >/dev/null || need+=(default-jdk-headless)
command -v mvn   >/dev/null || need+=(maven)
# The web console's browser tests: Debian's headless Chromium, driven by Playwright's
# PyPI driver (never `playwright install`: no browser download from anywhere else).
[ -x /usr/bin/chromium ]     || need+=(chromium)
# Workers on skewed clocks in the lease tests: libfaketime (Debian's faketime).
command -v faketime >/dev/null || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
  echo "[bootstrap] installing ${need[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[dev]'
echo "[bootstrap] Python environment ready in $venv"
