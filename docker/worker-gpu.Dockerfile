# Trainer / retrain-worker image, CUDA build of torch 2.13.0 and faiss-gpu. Same entry points as
# docker/worker-cpu.Dockerfile; it can also serve the API with FAISS on the GPU (FAISS_USE_GPU=true,
# command `uvicorn service.app:app --host 0.0.0.0 --port 8000`).
#
#   docker build -f docker/worker-gpu.Dockerfile -t mmssl-worker-gpu .
#   docker compose -f docker-compose.yml -f docker-compose.gpu.yml up -d
#
# Base: nvidia/cuda *base* (not runtime): the CUDA user-space libraries come as pinned wheels with
# torch (CUDA 13.0) and faiss-gpu (CUDA 12) in docker/requirements/worker-gpu.txt, so the runtime
# variant's 1.5 GB of CUDA 13.0 libraries would only duplicate them. The base image keeps what the
# NVIDIA Container Toolkit reads: NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES and
# NVIDIA_REQUIRE_CUDA=cuda>=13.0, which refuses to start on a host driver too old for torch's CUDA
# 13 (driver >= 580) instead of failing at the first kernel.
# Python: Ubuntu 24.04 ships 3.12 only; uv installs the same CPython 3.11.13 as the other images
# (python-build-standalone, checksum-verified by uv). Digest pins as in the other Dockerfiles:
#   --build-arg CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04@sha256:<digest>
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy
ARG PYTHON_VERSION=3.11.13
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv
COPY docker/requirements/build.txt docker/requirements/worker.txt docker/requirements/worker-gpu.txt /tmp/
# worker.txt without faiss-cpu (faiss-gpu replaces it: both install the `faiss` module).
RUN grep -v '^faiss-cpu==' /tmp/worker.txt > /tmp/common.txt \
    && uv pip install --python /opt/venv/bin/python --no-deps -r /tmp/common.txt -r /tmp/worker-gpu.txt
COPY pyproject.toml README.md /src/
COPY artifact /src/artifact
COPY model /src/model
COPY training /src/training
COPY service /src/service
RUN uv pip install --python /opt/venv/bin/python --no-deps --build-constraints /tmp/build.txt /src \
    && uv pip check --python /opt/venv/bin/python \
    && /opt/venv/bin/python -c "import torch, faiss, service.worker, training.jobs; assert torch.version.cuda"

FROM ${CUDA_IMAGE}
RUN groupadd --gid 10001 mmssl \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mmssl \
    && mkdir -p /artifacts /data \
    && chown 10001:10001 /artifacts /data
# The venv's interpreter is a link into /opt/python: both travel.
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY configs /app/configs
COPY docker/init-model.sh /app/docker/init-model.sh
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ARTIFACT_ROOT=/artifacts \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
CMD ["python", "-m", "service.worker"]
