"""Loading, checking and writing ONNX files, and onnxruntime's offline graph optimization.

Every writer here goes through `save_atomic`: a failed step never leaves a half-written model behind
under the name the user asked for.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError
from .session import create as create_session

LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return type(exc).__name__


def load_model(path: Path, *, check: bool = True):
    """Read and validate an ONNX file; anything else is a one-line UsageError."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise UsageError(f"{path}: not an ONNX model ({first_line(exc)})") from None
    if not model.graph.node:
        raise UsageError(f"{path}: not an ONNX model (no graph nodes)")
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise UsageError(f"{path}: invalid ONNX model: {first_line(exc)}") from None
    return model


def opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_like_open(path: Path) -> None:
    """Give a file made with mkstemp (always 0600) the mode a plain open() would have: 0666 minus the umask."""
    os.chmod(path, 0o666 & ~current_umask())


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it becomes `dest`, on failure it disappears."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            chmod_like_open(tmp_path)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_atomic(model, dest: Path) -> Path:
    import onnx

    with atomic_path(dest) as tmp:
        onnx.save(model, str(tmp))
    return Path(dest)


def infer_shapes(model):
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is a help, never a reason to fail
        return model


def optimize(src: Path, dest: Path, *, level: str = "extended") -> dict:
    """onnxruntime's graph optimizations applied once, offline, then ONNX shape inference.

    "extended" is the default: "all" adds layout transforms (NCHWc) that only onnxruntime's CPU provider
    understands, which would tie the file to one provider.
    """
    import onnx
    import onnxruntime as ort

    if level not in LEVELS:
        raise UsageError(f"unknown optimization level {level!r}; use one of {', '.join(LEVELS)}")
    from .quantize import raise_opset

    model = load_model(src)
    nodes_before = len(model.graph.node)
    model, old_opset = raise_opset(model)
    with tempfile.TemporaryDirectory(prefix="edgefleet-opt-") as tmp:
        raised = Path(tmp) / "raised.onnx"
        onnx.save(model, str(raised))
        out = Path(tmp) / "optimized.onnx"
        try:
            create_session(raised, graph_optimization_level=getattr(ort.GraphOptimizationLevel, LEVELS[level]),
                           optimized_model_filepath=str(out))
        except Exception as exc:
            raise UsageError(f"{src}: onnxruntime cannot load it: {first_line(exc)}") from None
        optimized = infer_shapes(onnx.load(str(out)))
        try:
            onnx.checker.check_model(optimized)
        except Exception as exc:
            raise UsageError(f"the optimized model is not valid ONNX: {first_line(exc)}") from None
    save_atomic(optimized, dest)
    return {"source": str(src), "output": str(dest), "level": level, "opset": [old_opset, opset(optimized)],
            "nodes_before": nodes_before, "nodes_after": len(optimized.graph.node)}
