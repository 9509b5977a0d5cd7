#!/usr/bin/env bash
# The product image (Dockerfile) as IMAGE (default pushtask:e2e).
#   stock:   `docker build` of the repository as a user with a registry does it
#            (python:3.11-slim, wheels from PyPI inside the build).
#   offline: no registry: the base is a Debian bookworm root filesystem with Debian's
#            Python 3.11 (`docker import`), and the wheels are built on this machine with
#            `pip wheel` (PyPI is reachable here, Docker Hub is not) and put into the
#            build context, so `docker build` itself needs no network.
# KIND_IMAGES=auto (default) takes stock when the base image can be pulled.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MODE=${KIND_IMAGES:-auto}
if [ "$MODE" = auto ]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 || docker pull -q python:3.11-slim >/dev/null 2>&1; then
    MODE=stock
  else
    MODE=offline
  fi
fi

t0=$(now)
if [ "$MODE" = stock ]; then
  log "building $PRODUCT_IMAGE from the Dockerfile (stock base)"
  docker build -q -t "$PRODUCT_IMAGE" "$ROOT" >/dev/null
  log "built $PRODUCT_IMAGE in $(took "$t0")s"
  exit 0
fi

# --- the base: Debian's Python 3.11 ------------------------------------------------------
BASE_PACKAGES=$PYTHON_PACKAGES
# Keyed by what is in it (not by this script): a new base invalidates Docker's layer cache.
BASE_KEY=$(key "$BASE_PACKAGES" "$DEBIAN_SUITE" "${DEBIAN_MIRRORS[@]}")
BASE_IMAGE=pushtask.local/python:3.11-$DEBIAN_SUITE-$BASE_KEY
if ! image_cached "$BASE_IMAGE" "$KIND_CACHE/images/python-$BASE_KEY.tar"; then
  tar=$(rootfs python "$BASE_PACKAGES")
  t1=$(now)
  # `docker import` takes a bare filesystem: the image config is given here.
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tar" "$BASE_IMAGE" >/dev/null
  save_image "$BASE_IMAGE" "$KIND_CACHE/images/python-$BASE_KEY.tar"
  log "imported $BASE_IMAGE in $(took "$t1")s"
fi

# --- wheels, built on the host ------------------------------------------------------------
# Every runtime dependency of pyproject.toml, plus the build backend the Dockerfile's
# `pip install .` needs (isolated builds fetch it; here it must be in the wheelhouse).
# Keyed by the dependency list: an unchanged pyproject reuses the same wheels.
DEPS=$("$PY" - "$ROOT/pyproject.toml" <<'PYEOF'
import sys, tomllib
data = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(data["build-system"]["requires"] + data["project"]["dependencies"]))
PYEOF
)
WHEELS=$KIND_CACHE/wheels/$(key "$DEPS" "$("$PY" -c 'import sys; print(sys.version_info[:2])')")
if [ ! -f "$WHEELS/.complete" ]; then
  t1=$(now)
  log "building the wheelhouse ($WHEELS)"
  rm -rf "$WHEELS"; mkdir -p "$WHEELS"
  printf '%s\n' "$DEPS" >"$WHEELS/requirements.txt"
  # The host's Python is 3.11 on glibc like the image's, so its wheels install there.
  nice -n 10 "$PY" -m pip wheel -q --wheel-dir "$WHEELS" -r "$WHEELS/requirements.txt" >&2
  touch "$WHEELS/.complete"
  log "built the wheelhouse in $(took "$t1")s"
fi

# --- the build context: the Dockerfile's files plus the wheelhouse -------------------------
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
cp "$ROOT/Dockerfile" "$ROOT/pyproject.toml" "$ROOT/README.md" "$CTX/"
# The source folders the Dockerfile copies (tests/unit/test_distribution.py keeps the two
# lists equal).
for d in pushtask operator worker console client tracker; do
  # Sources only: the same things .dockerignore keeps out of a stock build stay out here.
  tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' -cf - "$d" | tar -C "$CTX" -xf -
done
mkdir -p "$CTX/wheelhouse"
cp "$WHEELS"/*.whl "$CTX/wheelhouse/"

# The image is rebuilt only when its inputs changed: the sources, the wheels, the base.
SRC_KEY=$(cd "$CTX" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . | sha256sum | cut -c1-16)-$BASE_KEY
if [ "$(docker image inspect -f '{{index .Config.Labels "pushtask.source-key"}}' "$PRODUCT_IMAGE" 2>/dev/null)" = "$SRC_KEY" ]; then
  log "$PRODUCT_IMAGE is up to date (sources unchanged)"
  exit 0
fi
t1=$(now)
# --network none: proof that the build fetches nothing.
docker build -q --network none --build-arg BASE="$BASE_IMAGE" --label "pushtask.source-key=$SRC_KEY" \
  -t "$PRODUCT_IMAGE" "$CTX" >/dev/null
log "built $PRODUCT_IMAGE (offline) in $(took "$t1")s; all steps $(took "$t0")s"
