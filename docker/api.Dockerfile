# API image: FastAPI + FAISS (CPU) + Redis client, never torch (the service does not import it).
#
#   docker build -f docker/api.Dockerfile -t mmssl-api .
#
# Reproducible: the base image is pinned by tag (pin it by digest too with
#   --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest>, the digest printed by
#   `docker buildx imagetools inspect python:3.11.13-slim-bookworm`), every Python package by exact
# version in docker/requirements/api.txt (the versions CI tested, see scripts/lock_requirements.py),
# and pip resolves nothing (--no-deps): the lock is the whole environment.
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
# The project's wheel is built with a pinned setuptools in a throwaway venv, not in the runtime one.
COPY docker/requirements/build.txt /tmp/build.txt
RUN python -m venv /opt/build && /opt/build/bin/pip install --no-deps -r /tmp/build.txt
COPY docker/requirements/api.txt docker/requirements/py-compat.txt /tmp/
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-deps -r /tmp/api.txt -r /tmp/py-compat.txt
# Only what the service needs: artifact/ (the contract) and service/. model/ and training/ stay out.
COPY pyproject.toml README.md /src/
COPY artifact /src/artifact
COPY service /src/service
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels /src \
    && /opt/venv/bin/pip install --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import service.app, sys; assert 'torch' not in sys.modules"

FROM ${PYTHON_IMAGE}
# A fixed uid so that volume ownership is the same in every image of the stack.
RUN groupadd --gid 10001 mmssl \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mmssl \
    && mkdir -p /artifacts \
    && chown 10001:10001 /artifacts
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ARTIFACT_ROOT=/artifacts
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Ready = a verified model is loaded (503 before the first promotion or while none loads).
# The slim image has no curl: urlopen raises on any non-2xx answer, so the exit code says it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
# One process per container: scale with replicas (docker compose up --scale api=N), not workers.
CMD ["uvicorn", "service.app:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--forwarded-allow-ips", "*", "--timeout-graceful-shutdown", "20"]
