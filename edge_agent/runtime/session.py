"""The one place that creates onnxruntime sessions: the reconciler's models, the cameras', the benchmarks'.

Memory: a session is built from the model's path when there is one, so onnxruntime reads the file itself and
the agent never holds a second copy of the bytes; and the serving session writes no optimized-graph file
(`optimized_model_filepath` serializes the whole optimized graph with its weights while loading: measured
3× the model's size of RSS during the load and 2× after, against 1× for plain onnxruntime).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from fleet_protocol.messages import Precision, Runtime

from .errors import ModelLoadError, ProviderError, first_line
from .providers import Provider, resolve

log = logging.getLogger(__name__)

GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int, optimization: str = "all") -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = GRAPH_LEVELS[optimization]
    options.log_severity_level = 3  # onnxruntime's own warnings go to stderr unformatted; we log what matters
    return options


def providers_for(runtime: Runtime, available: list[str] | None = None) -> list[Provider]:
    """The provider plug-ins a session for `runtime` asks for, in order (ProviderError when none fits)."""
    return resolve(list(runtime.providers), available if available is not None else ort.get_available_providers(),
                   runtime.require_provider, runtime.precision)


def create_session(model: bytes | Path, runtime: Runtime | None = None, *, providers: list[Provider] | None = None,
                   optimization: str = "all", cache_dir: Path | None = None,
                   disk_cache: bool = True) -> ort.InferenceSession:
    """A session for `model` (a path, or the bytes of a model held only in memory) as `runtime` says.

    `disk_cache=False` (a decrypted model): no provider writes a compiled engine or graph cache to disk, since it
    would hold the model's weights in the clear; such a model is built again on every load.

    Raises ProviderError when a required provider is missing or the session does not run on it, and
    ModelLoadError when onnxruntime refuses the model."""
    runtime = runtime or Runtime()
    providers = providers if providers is not None else providers_for(runtime)
    precision: Precision = runtime.precision
    cache = cache_dir or Path(".")
    options = session_options(runtime.intra_op_threads, optimization)
    source = str(model) if isinstance(model, Path) else model

    def provider_options(p: Provider) -> dict[str, str]:
        opts = p.options(cache, precision)
        return opts if disk_cache else {k: v for k, v in opts.items() if "cache" not in k}

    try:
        session = ort.InferenceSession(
            source, sess_options=options,
            providers=[(p.name, o) if (o := provider_options(p)) else p.name for p in providers],
        )
    except Exception as exc:  # onnxruntime's errors share no base class beyond Exception
        what = model.name if isinstance(model, Path) else f"a {len(model)}-byte model"
        raise ModelLoadError(f"onnxruntime cannot load {what}: {first_line(exc)}") from None
    if isinstance(model, bytes):
        # onnxruntime keeps the bytes it was built from, to rebuild the session on a provider fallback: for a
        # decrypted model that is a second plaintext copy in RAM for the session's whole life (measured +1x the
        # model's size, steady). The agent reports a failed provider instead of falling back, so drop them.
        session.disable_fallback()
        session._model_bytes = None
    used = session.get_providers()
    wanted = providers[0].name
    if runtime.require_provider is not None and used[0] != wanted:
        raise ProviderError(f"{wanted} is required but the session runs on {used[0]} (the model or the driver refused it)")
    if used[0] != wanted:
        log.warning("preferred %s, but the session runs on %s", wanted, used[0])
    return session
