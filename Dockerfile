# optic's serving image: ONNX Runtime behind BentoML, no torch. See README.md, "Deploying optic".
#
#   GPU (default):  docker build -t optic:gpu .
#   CPU:            docker build -t optic:cpu --build-arg ORT_PACKAGE=onnxruntime \
#                       --build-arg BASE_IMAGE=debian:bookworm-slim .
#
# Private package index or CA: pass a pip.conf (and the CA it names) as build secrets, never as
# build args, so that neither lands in the image or its history:
#   --secret id=pip.conf,src=pip.conf --secret id=pip-cert,src=/etc/ssl/certs/ca-certificates.crt
# (the pip.conf then says `cert = /run/secrets/pip-cert`).

# CUDA 13 + cuDNN 9: what onnxruntime-gpu 1.31 is built against. Move both together.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
# Named without a version, the ORT package gets uv.lock's onnxruntime version (deploy/container/requirements.py).
ARG ORT_PACKAGE=onnxruntime-gpu

FROM ${BASE_IMAGE} AS python
# The CUDA images carry no Python; Debian/Ubuntu bases with python3 and venv already are left alone.
# Versions are not pinned: they are whatever the base's distribution release ships (python3 3.11/3.12).
# hadolint ignore=DL3008
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

FROM python AS build
ARG ORT_PACKAGE
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CONFIG_FILE=/run/secrets/pip.conf \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/optic
# Dependencies first, exactly as uv.lock pins them: rebuilt only when the lock or the ORT choice changes.
# uv only exports the lock here; it stays in the build stage.
COPY pyproject.toml uv.lock deploy/container/requirements.py ./
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-cert \
    python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}" \
    && /opt/uv/bin/uv export --frozen --no-emit-project --no-hashes --format requirements-txt > locked.txt \
    && python3 requirements.py locked.txt "${ORT_PACKAGE}" > requirements.txt \
    && /opt/optic/bin/pip install --no-cache-dir -r requirements.txt
COPY README.md ./
COPY dataformats/ dataformats/
COPY service/ service/
# Building the project's wheel fetches setuptools (build isolation): the index settings again.
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-cert \
    /opt/optic/bin/pip install --no-cache-dir --no-deps . \
    && /opt/optic/bin/python -c "import service.service"

FROM python AS runtime
RUN groupadd --system --gid 10001 optic \
    && useradd --system --uid 10001 --gid optic --home-dir /home/optic --create-home --shell /usr/sbin/nologin optic \
    && install -d -o optic -g optic /var/lib/optic
COPY --from=build /opt/optic /opt/optic
COPY deploy/container/healthcheck.py /opt/optic/healthcheck.py
# The baked-in model repository; mount a volume at $OPTIC_MODEL_REPOSITORY to serve other models.
COPY models/ /models/
# BENTOML_HOME under /tmp: the root filesystem may be read-only (Kubernetes readOnlyRootFilesystem).
# OPTIC_DATA_DIR: evaluation jobs' SQLite state and reports; mount a volume there to keep them.
ENV PATH=/opt/optic/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPTIC_MODEL_REPOSITORY=/models \
    OPTIC_DATA_DIR=/var/lib/optic \
    HOST=0.0.0.0 \
    PORT=3000 \
    BENTOML_HOME=/tmp/bentoml \
    BENTOML_DO_NOT_TRACK=true
USER 10001:10001
WORKDIR /home/optic
# 3000: HTTP (optic's routes and KServe v2 REST); 8001: KServe v2 gRPC (OPTIC_GRPC_PORT).
EXPOSE 3000 8001
# start-period: loading and warming the models (TensorRT engines take longest) before /readyz says yes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python3", "/opt/optic/healthcheck.py"]
ENTRYPOINT ["optic", "serve"]
