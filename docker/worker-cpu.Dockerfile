# Trainer / retrain-worker image, CPU build of torch 2.13.0. Runs `python -m service.worker` (RQ
# worker for POST /retrain jobs) by default, and the one-shot `init` of docker-compose.yml.
#
#   docker build -f docker/worker-cpu.Dockerfile -t mmssl-worker .
#
# Pinned like docker/api.Dockerfile: base image by tag (digest via --build-arg PYTHON_IMAGE=...@sha256:...),
# every package by exact version, nothing resolved at build time.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Offline builds (docs/DEPLOY.md): CA certificates in docker/certs/*.crt (none in the repository) are
# trusted by pip in this stage only, for a network whose HTTPS is intercepted. Without any, pip keeps
# its own bundle and nothing changes.
COPY docker/certs/ /tmp/certs/
RUN if ls /tmp/certs/*.crt >/dev/null 2>&1; then \
        { cat /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true; cat /tmp/certs/*.crt; } > /etc/pip-ca.crt \
        && printf '[global]\ncert = /etc/pip-ca.crt\n' > /etc/pip.conf; \
    fi
COPY docker/requirements/build.txt /tmp/build.txt
RUN python -m venv /opt/build && /opt/build/bin/pip install --no-deps -r /tmp/build.txt
# torch: PyPI's Linux wheel of 2.13.0 is the CUDA 13 build (it pulls ~3 GB of CUDA wheels). The CPU
# build is published only on the PyTorch CPU index. Pinned approach: that index is the *only* index
# of this one command (--index-url, not --extra-index-url, so no other package can come from it),
# the version carries the +cpu local label (no other build can match), and --no-deps (torch's own
# dependencies come from PyPI, pinned in worker.txt, in the next step).
# Offline (docs/DEPLOY.md): TORCH_INDEX_URL=docker/wheels installs the wheel put in that folder of
# the build context instead (--no-index: nothing else is looked at), or name a reachable mirror.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY docker/wheels/ /tmp/wheels/
# $source is two or three words on purpose.
# hadolint ignore=SC2086
RUN python -m venv /opt/venv \
    && if [ "$TORCH_INDEX_URL" = docker/wheels ]; then source="--no-index --find-links /tmp/wheels"; \
       else source="--index-url $TORCH_INDEX_URL"; fi \
    && /opt/venv/bin/pip install --no-deps $source "torch==${TORCH_VERSION}+cpu"
COPY docker/requirements/worker.txt docker/requirements/py-compat.txt /tmp/
RUN /opt/venv/bin/pip install --no-deps -r /tmp/worker.txt -r /tmp/py-compat.txt
COPY pyproject.toml README.md /src/
COPY artifact /src/artifact
COPY model /src/model
COPY training /src/training
COPY service /src/service
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels /src \
    && /opt/venv/bin/pip install --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import torch, service.worker, training.jobs; assert not torch.cuda.is_available()"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 mmssl \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mmssl \
    && mkdir -p /artifacts /data \
    && chown 10001:10001 /artifacts /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Trainer configs (RETRAIN_CONFIG / INIT_CONFIG are paths relative to /app) and the init script.
COPY configs /app/configs
COPY docker/init-model.sh /app/docker/init-model.sh
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ARTIFACT_ROOT=/artifacts \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
CMD ["python", "-m", "service.worker"]
