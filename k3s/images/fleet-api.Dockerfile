# syntax=docker/dockerfile:1.7
# edgefleet fleet API. Build from the repository root:
#   docker build -f k3s/images/fleet-api.Dockerfile -t ghcr.io/edgefleet/fleet-api:0.1.0 .

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
 && /opt/edgefleet/bin/pip install "$(ls /wheels/edgefleet-*.whl)[api]"
# The API image runs fleet_api and the contract; drop the device and tooling packages.
RUN set -eu; site=$(/opt/edgefleet/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site/edge_agent" "$site/model_tools" /opt/edgefleet/bin/edge-agent /opt/edgefleet/bin/model-tools; \
    /opt/edgefleet/bin/python -c 'import fleet_api, fleet_protocol, psycopg'; \
    /opt/edgefleet/bin/pip uninstall --yes pip wheel setuptools 2>/dev/null || true; \
    find /opt/edgefleet -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="edgefleet fleet API" \
      org.opencontainers.image.source="https://github.com/edgefleet/edgefleet" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN python -m pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true \
 && groupadd --system --gid 10001 edgefleet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgefleet-api --no-create-home --shell /usr/sbin/nologin edgefleet \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/edgefleet-api /var/lib/edgefleet-api/artifacts
COPY --from=builder /opt/edgefleet /opt/edgefleet
COPY --chmod=0755 k3s/images/entrypoint.sh /usr/local/bin/edgefleet-entrypoint
ENV PATH=/opt/edgefleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEFLEET_API_HOST=0.0.0.0 \
    EDGEFLEET_API_PORT=8000 \
    EDGEFLEET_API_ARTIFACT_DIR=/var/lib/edgefleet-api/artifacts
USER 10001:10001
WORKDIR /var/lib/edgefleet-api
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGEFLEET_API_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["edgefleet-entrypoint", "fleet-api"]
CMD ["serve"]
