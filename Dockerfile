# One image for the operator, the worker and the console; the command picks the role:
#   docker run IMAGE pushtask-operator --all-namespaces
#   docker run IMAGE pushtask-worker
#   docker run IMAGE pushtask-console
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY pushtask ./pushtask
COPY operator ./operator
COPY worker ./worker
COPY console ./console
COPY devstack ./devstack
# A virtualenv that is copied whole into the runtime stage: no compilers there.
RUN python -m venv /opt/pushtask && /opt/pushtask/bin/pip install .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="pushtask" \
      org.opencontainers.image.description="PushTask operator, worker and console" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/pushtask /opt/pushtask
ENV PATH=/opt/pushtask/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root with a numeric id, so runAsNonRoot can verify it; the root filesystem can be
# read-only (the chart mounts an emptyDir on /tmp).
RUN groupadd --gid 10001 pushtask && useradd --uid 10001 --gid 10001 --no-create-home pushtask
USER 10001:10001
EXPOSE 8080 9090
CMD ["pushtask-operator", "--all-namespaces"]
