"""The README's import rules, checked on the source (AST) so that a shortcut fails `make lint`, not a review.

- fleet_protocol imports nothing of ours, and at import time nothing but the standard library, pydantic and
  cryptography (its only dependencies: a device or a CLI install gets no numpy through the contract);
- edge_agent, fleet_api, model_tools and fleet_cli never import each other;
- in fleet_api and edge_agent only the transport shells (HTTP routes, MQTT, the dashboard, the camera view),
  the wiring (app, agent) and the cli import FastAPI, starlette, uvicorn or paho: the core knows none of them;
- fleet_cli is an HTTP client: no server package, ours or a server library.
And model_tools creates onnxruntime sessions in one module. The agent's finer rules (each shell only its own
transport, one module creating sessions) are in tests/edge_agent/test_architecture.py.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"fleet_protocol", "fleet_api", "edge_agent", "model_tools", "fleet_cli", "demo", "tests", "benchmarks"}
APPS = ["edge_agent", "fleet_api", "model_tools", "fleet_cli"]
TRANSPORTS = {"fastapi", "starlette", "uvicorn", "paho"}
SHELLS = {  # the modules of each package that may speak a transport (README "Layout")
    "fleet_api": ("routes/", "mqtt/", "web/", "app.py", "cli.py"),
    "edge_agent": ("http/", "mqtt/", "camera/view.py", "camera/cli.py", "agent.py", "cli.py"),
}
SERVER_LIBRARIES = TRANSPORTS | {"sqlalchemy", "alembic", "psycopg", "onnxruntime", "onnx", "numpy", "cv2"}
PROTOCOL_DEPENDENCIES = {"pydantic", "cryptography"}


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def ident(path: Path) -> str:
    return str(path.relative_to(ROOT))


def resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute dotted name a relative import refers to."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)[: -node.level]
    return ".".join([*package, node.module] if node.module else package)


def imports(path: Path, *, at_import_time: bool = False) -> set[str]:
    """Dotted names of every import in the file (relative ones resolved). With `at_import_time`, only those that
    run when the module is imported: not inside functions, nor under `if TYPE_CHECKING`."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(resolve(path, node) if node.level else node.module or "")
        if at_import_time and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if at_import_time and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("path", sources("fleet_protocol"), ids=ident)
def test_the_protocol_imports_nothing_of_ours(path):
    assert not top(imports(path)) & (OURS - {"fleet_protocol"})


@pytest.mark.parametrize("path", sources("fleet_protocol"), ids=ident)
def test_the_protocol_needs_only_its_own_dependencies_at_import_time(path):
    third_party = top(imports(path, at_import_time=True)) - set(sys.stdlib_module_names) - {"fleet_protocol"}
    assert third_party <= PROTOCOL_DEPENDENCIES, "import it inside the function that needs it"


@pytest.mark.parametrize("path", [p for app in APPS for p in sources(app)], ids=ident)
def test_the_deployables_never_import_each_other(path):
    own = path.relative_to(ROOT).parts[0]
    assert not top(imports(path)) & (set(APPS) - {own})


@pytest.mark.parametrize("path", sources("fleet_api") + sources("edge_agent"), ids=ident)
def test_only_the_shells_know_the_transports(path):
    package, inner = path.relative_to(ROOT).parts[0], path.relative_to(ROOT / path.relative_to(ROOT).parts[0]).as_posix()
    if inner.startswith(SHELLS[package]):
        return
    assert not top(imports(path)) & TRANSPORTS, f"{inner} is core: move the transport part into {SHELLS[package]}"


@pytest.mark.parametrize("path", sources("fleet_cli"), ids=ident)
def test_the_cli_is_a_client_only(path):
    assert not top(imports(path)) & (SERVER_LIBRARIES | {"fleet_api", "edge_agent", "model_tools"})


def test_the_tools_create_onnxruntime_sessions_in_one_module():
    """model_tools/session.py sets the options every command shares (the agent's rule: tests/edge_agent)."""
    creators = sorted({ident(path) for path in sources("model_tools") for node in ast.walk(ast.parse(path.read_text()))
                       if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "InferenceSession"})
    assert creators == ["model_tools/session.py"]


def test_the_rules_see_imports():
    """The checks above pass on an empty set too: make sure the parser finds what a real module imports."""
    found = imports(ROOT / "fleet_api" / "routes" / "deps.py")
    assert "fastapi" in top(found) and any(n.startswith("fleet_api.") for n in found)
    lazy = imports(ROOT / "fleet_protocol" / "golden.py")
    assert "numpy" in lazy and "numpy" not in imports(ROOT / "fleet_protocol" / "golden.py", at_import_time=True)
