# syntax=docker/dockerfile:1.7
# The serving image llama-cpp tiers run (core/render.py: ghcr.io/tiered-dev/tiered-serving:ray<version>):
# Ray with the tiered_serving app and llama-cpp-python. Build from the repository root:
#   docker build -f images/llama-cpp.Dockerfile -t ghcr.io/tiered-dev/tiered-serving:ray2.60.0 .
# Wheels are built in the first stage (compilers stay there); the final stage installs them offline.
# Pin the base by digest in CI; the tag follows the tier's default rayVersion.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu

FROM ${RAY_IMAGE} AS build
# Only the build stage runs as root (apt); the final stage is the image's non-root user.
# hadolint ignore=DL3002
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 CMAKE_ARGS="-DGGML_NATIVE=OFF"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY router/ router/
COPY serving/ serving/
# The runtime dependencies plus the `serving` extra, as wheels (tests/unit/test_images.py checks this line).
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[serving]"

FROM ${RAY_IMAGE}
LABEL org.opencontainers.image.title="tiered-serving" \
      org.opencontainers.image.source="https://github.com/tiered-dev/tiered"
COPY --from=build /wheels /tmp/wheels
# Ray itself comes from the base image; the same set again, offline from the wheels built above.
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels "tiered[serving]==0.1.0" \
 && rm -rf /tmp/wheels
# Ray's image user (uid 1000), not root.
USER 1000:100
