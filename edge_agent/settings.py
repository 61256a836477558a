"""Settings of the edge agent (env prefix EDGEFLEET_AGENT_)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet_protocol.messages import DEVICE_ID_PATTERN, Batching, Precision, Runtime
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
    max_request_mb: float = 64.0  # larger bodies get 413 before they are read
    # Models whose warm run is shorter run on the HTTP event loop itself: a thread hop costs more than they do.
    inline_below_ms: float = 0.25
    # Above that, session runs go to this many worker threads (default: one per core; more only thrash caches).
    infer_workers: int = 0
    # Default preference when the desired state names none; the first one onnxruntime offers wins.
    providers: str = "TensorrtExecutionProvider,CUDAExecutionProvider,OpenVINOExecutionProvider,CPUExecutionProvider"
    intra_op_threads: int = 1
    precision: Precision = Precision.fp32
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # Defaults until the fleet's desired state says otherwise (it is remembered on disk once it did).
    batching: bool = False
    batch_max_size: int = 8
    batch_max_delay_ms: float = 2.0
    batch_workers: int = 1  # batches run at once; with one intra-op thread each, up to one per core pays
    # What models may take in memory (MiB), unless the desired state says; 0: no check. A model that would not
    # fit is refused with a reported reason before it is loaded, instead of the kernel's OOM killer deciding.
    memory_budget_mb: int = Field(default=0, ge=0)
    keep_models: int = 3  # bundles kept on disk besides every model's current and previous
    telemetry_interval_s: float = 10.0
    # No desired state this long after connecting: say hello again (doubling, up to a minute).
    hello_retry_s: float = Field(default=5.0, gt=0, le=3600)
    # No chunk for this long: subscribe to the artifact again (its retained chunks come again from the broker);
    # nothing new after that either: ask the fleet again. Each quiet round doubles the wait, up to the max.
    chunk_timeout_s: float = Field(default=3.0, gt=0)
    chunk_wait_max_s: float = Field(default=60.0, gt=0)
    download_timeout_s: float = 600.0
    # Data capture (Desired.capture opts a device in; docs/agent.md "Data capture"). Kept samples wait in
    # data_dir/capture until the fleet acknowledges them, at most this much (the oldest go first).
    capture_spool_mb: float = Field(default=256.0, gt=0)
    capture_ack_timeout_s: float = Field(default=30.0, gt=0)  # no acknowledgement this long: sent again
    # A signed BlazeFace bundle to blur faces with; without one, a BlazeFace model the device serves is used.
    face_detector: Path | None = None

    def provider_list(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()]

    def runtime(self) -> Runtime:
        """The runtime a model runs with when the desired state names none for it."""
        return Runtime(
            providers=self.provider_list(), intra_op_threads=self.intra_op_threads, precision=self.precision,
            batching=Batching(enabled=self.batching, max_batch_size=self.batch_max_size, max_delay_ms=self.batch_max_delay_ms),
        )
