# syntax=docker/dockerfile:1.7
# edgefleet edge agent, CPU image: edge_agent + fleet_protocol + onnxruntime, nothing else.
# Build from the repository root:
#   docker build -f k3s/images/agent.Dockerfile -t ghcr.io/edgefleet/edge-agent:0.1.0 .

FROM python:3.11-slim-bookworm AS builder
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
 && /opt/edgefleet/bin/pip install "$(ls /wheels/edgefleet-*.whl)[agent]"
# The distribution holds all four packages; a device runs only edge_agent and the contract.
RUN set -eu; site=$(/opt/edgefleet/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site/fleet_api" "$site/model_tools" /opt/edgefleet/bin/fleet-api /opt/edgefleet/bin/model-tools; \
    /opt/edgefleet/bin/python -c 'import edge_agent, fleet_protocol, onnxruntime'; \
    /opt/edgefleet/bin/pip uninstall --yes pip wheel setuptools 2>/dev/null || true; \
    find /opt/edgefleet -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="edgefleet edge agent" \
      org.opencontainers.image.source="https://github.com/edgefleet/edgefleet" \
      org.opencontainers.image.licenses="Apache-2.0"
# No compiler, no pip: the interpreter, the venv and the entrypoint only.
RUN python -m pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true \
 && groupadd --system --gid 10001 edgefleet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgefleet --no-create-home --shell /usr/sbin/nologin edgefleet \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/edgefleet
COPY --from=builder /opt/edgefleet /opt/edgefleet
COPY --chmod=0755 k3s/images/entrypoint.sh /usr/local/bin/edgefleet-entrypoint
ENV PATH=/opt/edgefleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEFLEET_AGENT_DATA_DIR=/var/lib/edgefleet \
    EDGEFLEET_AGENT_HTTP_HOST=0.0.0.0 \
    EDGEFLEET_AGENT_HTTP_PORT=8080 \
    EDGEFLEET_AGENT_PROVIDERS=CPUExecutionProvider
USER 10001:10001
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('EDGEFLEET_AGENT_HTTP_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["edgefleet-entrypoint", "edge-agent"]
CMD ["run"]
