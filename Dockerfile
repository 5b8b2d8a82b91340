# The Shardwright image: `shardwright operator`, the rank launcher (`python -m
# shardwright.workers.launch`) and the Ray head and worker commands, all from one venv.
# The chart's default image (helm/shardwright/values.yaml) is this file built at the chart's
# appVersion; how to build and what was tried here: docs/image.md.
#
#   docker build -t ghcr.io/shardwright/shardwright:0.1.0 .
#   docker build --build-arg VARIANT=cuda -t ghcr.io/shardwright/shardwright:0.1.0-cuda .
#
# VARIANT picks torch's wheel index: cpu (PyTorch's CPU wheels, about 1 GB smaller) or cuda
# (PyPI's torch, the CUDA build with its nvidia-* wheels; the node's driver comes from the
# NVIDIA container toolkit, so the base stays the same slim Python).

ARG BASE_IMAGE=docker.io/library/python:3.11.7-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/shardwright
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY operator/ operator/
COPY workers/ workers/
COPY kernels/ kernels/
COPY sdk/ sdk/
# torch first, from the variant's index, so the next line finds it satisfied.
RUN case "$VARIANT" in \
      cpu) index=https://download.pytorch.org/whl/cpu ;; \
      cuda) index=https://pypi.org/simple ;; \
      *) echo "VARIANT is cpu or cuda, not '$VARIANT'" >&2; exit 2 ;; \
    esac \
 && /opt/shardwright/bin/pip install --index-url "$index" "torch==${TORCH_VERSION}"
# The project's runtime dependencies (pyproject.toml; the Makefile adds only the test extra),
# each pinned to the version the test suite ran with; tests/image checks the two agree.
RUN /opt/shardwright/bin/pip install \
      "numpy==2.4.6" "kopf==1.45.2" "kubernetes==37.0.3" "ray==2.60.0" "pydantic==2.14.4" \
      "prometheus-client==0.26.0" "pyyaml==6.0.4" "tqdm==4.70.1" "s3fs==2026.9.0" \
      "cryptography==51.0.1" "tokenizers==0.23.3" "safetensors==0.8.0" "pyarrow==26.0.1" \
      . \
 && /opt/shardwright/bin/shardwright --version

FROM ${BASE_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="shardwright" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/shardwright/shardwright" \
      io.shardwright.variant="${VARIANT}"
# 65532: the uid and gid the chart's securityContext runs as (runAsNonRoot).
RUN groupadd --system --gid 65532 shardwright \
 && useradd --system --uid 65532 --gid 65532 --create-home --home-dir /home/shardwright \
      --shell /usr/sbin/nologin shardwright
COPY --from=build /opt/shardwright /opt/shardwright
ENV PATH=/opt/shardwright/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
WORKDIR /home/shardwright
ENTRYPOINT ["shardwright"]
CMD ["--help"]
