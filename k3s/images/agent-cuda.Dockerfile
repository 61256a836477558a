# syntax=docker/dockerfile:1.7
# edgefleet edge agent, NVIDIA image: onnxruntime-gpu with the CUDA and TensorRT execution providers.
# The CUDA, cuDNN and TensorRT user-space libraries come from NVIDIA's pip wheels; the driver comes
# from the node through the NVIDIA container runtime (runtimeClassName: nvidia), so the base stays a
# plain Python image. Build from the repository root:
#   docker build -f k3s/images/agent-cuda.Dockerfile -t ghcr.io/edgefleet/edge-agent:0.1.0-cuda .
# ONNXRUNTIME_GPU and TENSORRT_LIBS must agree: take the TensorRT major that the chosen
# onnxruntime-gpu release is built against (onnxruntime's "TensorRT execution provider" requirements table).

FROM python:3.11-slim-bookworm AS builder
ARG ONNXRUNTIME_GPU="onnxruntime-gpu[cuda,cudnn]==1.31.1"
ARG TENSORRT_LIBS="tensorrt-cu12-libs>=10,<11"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleet_protocol ./fleet_protocol
COPY edge_agent ./edge_agent
COPY fleet_api ./fleet_api
COPY model_tools ./model_tools
RUN python -m venv /opt/edgefleet \
 && /opt/edgefleet/bin/pip install --upgrade pip wheel \
 && /opt/edgefleet/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/edgefleet/bin/pip install "$(ls /wheels/edgefleet-*.whl)[agent]" \
 && /opt/edgefleet/bin/pip uninstall --yes onnxruntime \
 && /opt/edgefleet/bin/pip install "${ONNXRUNTIME_GPU}" "${TENSORRT_LIBS}"
# Keep edge_agent and the contract only, check both providers are there, and list the NVIDIA
# library folders for the dynamic loader (nvidia-libs.conf, used in the final stage).
RUN set -eu; site=$(/opt/edgefleet/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site/fleet_api" "$site/model_tools" /opt/edgefleet/bin/fleet-api /opt/edgefleet/bin/model-tools; \
    /opt/edgefleet/bin/python -c 'import edge_agent, fleet_protocol, onnxruntime as ort; p = ort.get_available_providers(); assert "CUDAExecutionProvider" in p and "TensorrtExecutionProvider" in p, p'; \
    /opt/edgefleet/bin/pip uninstall --yes pip wheel setuptools 2>/dev/null || true; \
    find /opt/edgefleet -name '__pycache__' -prune -exec rm -rf {} +; \
    { ls -d "$site"/nvidia/*/lib "$site"/tensorrt_libs 2>/dev/null || true; } > /opt/edgefleet/nvidia-libs.conf

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="edgefleet edge agent (CUDA/TensorRT)" \
      org.opencontainers.image.source="https://github.com/edgefleet/edgefleet" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN python -m pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true \
 && groupadd --system --gid 10001 edgefleet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgefleet --no-create-home --shell /usr/sbin/nologin edgefleet \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/edgefleet
COPY --from=builder /opt/edgefleet /opt/edgefleet
# Let the loader find the pip-installed CUDA, cuDNN and TensorRT libraries without LD_LIBRARY_PATH.
RUN cp /opt/edgefleet/nvidia-libs.conf /etc/ld.so.conf.d/edgefleet-nvidia.conf && ldconfig
COPY --chmod=0755 k3s/images/entrypoint.sh /usr/local/bin/edgefleet-entrypoint
ENV PATH=/opt/edgefleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    EDGEFLEET_AGENT_DATA_DIR=/var/lib/edgefleet \
    EDGEFLEET_AGENT_HTTP_HOST=0.0.0.0 \
    EDGEFLEET_AGENT_HTTP_PORT=8080 \
    EDGEFLEET_AGENT_PROVIDERS=TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider
USER 10001:10001
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('EDGEFLEET_AGENT_HTTP_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["edgefleet-entrypoint", "edge-agent"]
CMD ["run"]
