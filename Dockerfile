# One image for the operator, the worker, the console and the tracker; the command picks the role:
#   docker run IMAGE pushtask-operator --all-namespaces
#   docker run IMAGE pushtask-worker
#   docker run IMAGE pushtask-console
#   docker run IMAGE pushtask-tracker
#
# BASE: any Debian-like image with Python 3.11 and its venv module. The default needs a
# registry; without one, scripts/kind/build-image.sh imports a Debian bookworm root
# filesystem with Debian's python3.11 and passes it here (docs/kind.md).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, in their own layer: a change to the sources alone reuses it.
COPY pyproject.toml ./
# Optional wheelhouse (an offline build: every dependency and the build backend as wheels,
# made on the host with `pip wheel`). The glob lets a plain checkout, which has none, build
# from PyPI; pyproject.toml is named again only so that the COPY always has a source.
COPY pyproject.toml wheelhous[e] /wheels/
# A virtualenv that is copied whole into the runtime stage: no compilers there.
RUN python3 -m venv /opt/pushtask \
 && python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
 && if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; fi \
 && /opt/pushtask/bin/pip install "$@" -r /tmp/requirements.txt
COPY README.md ./
COPY pushtask ./pushtask
COPY operator ./operator
COPY worker ./worker
COPY console ./console
COPY client ./client
COPY tracker ./tracker
# devstack/ (the local test cluster) is not copied: the image holds only the product.
RUN if ls /wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheels; fi \
 && /opt/pushtask/bin/pip install "$@" --no-deps . \
 && /opt/pushtask/bin/pip uninstall -y -q pip \
 && /opt/pushtask/bin/python -c "import pushtask_operator, pushtask_worker, pushtask_console, pushtask_client, pushtask_tracker"

FROM ${BASE}
LABEL org.opencontainers.image.title="pushtask" \
      org.opencontainers.image.description="PushTask operator, worker, console and tracker" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/pushtask /opt/pushtask
ENV PATH=/opt/pushtask/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root with a numeric id, so runAsNonRoot can verify it; the root filesystem can be
# read-only (the chart mounts an emptyDir on /tmp). groupadd/useradd: in both bases.
RUN groupadd --gid 10001 pushtask && useradd --uid 10001 --gid 10001 --no-create-home pushtask
USER 10001:10001
EXPOSE 8080 9090
CMD ["pushtask-operator", "--all-namespaces"]
