"""The agent's import rules, checked on its source (AST), so a shortcut fails here and not in review:
the core knows no transport, each shell only its own, nothing imports the API or the tools, and one module
creates onnxruntime sessions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "edge_agent"
TRANSPORTS = {"fastapi", "starlette", "uvicorn", "paho", "httpx"}
CORE = ["runtime", "reconcile.py", "store.py", "telemetry.py", "settings.py", "hardware.py", "preprocess.py"]


def modules(*parts: str) -> list[Path]:
    out = []
    for part in parts:
        path = ROOT / part
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, and the resolved first part of relative ones."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            package = path.relative_to(ROOT).parts[: -node.level]  # the package the relative import is from
            names.add("edge_agent." + ".".join([*package, *(node.module or "").split(".")[:1]]).strip("."))
    return names


@pytest.mark.parametrize("path", modules(*CORE), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_transport(path):
    found = imports(path)
    assert not found & TRANSPORTS
    assert not [n for n in found if n.startswith(("edge_agent.http", "edge_agent.mqtt", "edge_agent.camera"))]


@pytest.mark.parametrize("path", modules("http"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_http_shell_knows_no_mqtt(path):
    found = imports(path)
    assert "paho" not in found and not any(n.startswith("edge_agent.mqtt") for n in found)


@pytest.mark.parametrize("path", modules("mqtt"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_mqtt_shell_knows_no_http(path):
    found = imports(path)
    assert not found & {"fastapi", "starlette", "uvicorn"} and not any(n.startswith("edge_agent.http") for n in found)


@pytest.mark.parametrize("path", modules("."), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_agent_never_imports_the_api_or_the_tools(path):
    assert not imports(path) & {"fleet_api", "model_tools"}


def test_one_module_creates_onnxruntime_sessions():
    creators = []
    for path in modules("."):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "InferenceSession":
                creators.append(str(path.relative_to(ROOT)))
    assert creators == ["runtime/session.py"]
