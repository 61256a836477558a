"""Settings of the edge agent (env prefix EDGEFLEET_AGENT_)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet_protocol.messages import DEVICE_ID_PATTERN
from fleet_protocol.signing import load_public_key
from fleet_protocol.topics import DEFAULT_PREFIX


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_AGENT_")

    device_id: str = Field(default_factory=socket.gethostname, pattern=DEVICE_ID_PATTERN)
    broker_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls_ca: Path | None = None
    topic_prefix: str = DEFAULT_PREFIX
    data_dir: Path = Path("/var/lib/edgefleet")
    trusted_keys: str = ""  # comma-separated PEM public keys; bundles signed by anything else are refused
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    max_request_mb: float = 64.0
    # Default preference when the desired state names none; the first one onnxruntime offers wins.
    providers: str = "TensorrtExecutionProvider,CUDAExecutionProvider,OpenVINOExecutionProvider,CPUExecutionProvider"
    intra_op_threads: int = 1
    graph_optimization: str = "all"  # disable, basic, extended, all
    keep_models: int = 3  # bundles kept on disk (current, previous and one more)
    telemetry_interval_s: float = 10.0
    chunk_timeout_s: float = 3.0  # no chunk for this long: ask again for what is still missing
    download_timeout_s: float = 600.0

    def public_keys(self) -> list:
        return [load_public_key(Path(p.strip()).read_bytes()) for p in self.trusted_keys.split(",") if p.strip()]

    def provider_list(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()]
