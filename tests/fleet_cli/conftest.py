"""A live fleet API (real process, SQLite, real mosquitto) for the CLI tests, and a way to run `edgefleet`."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest

from demo.cluster import Broker, FleetApi
from fleet_cli.app import main


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture(scope="module")
def live(tmp_path_factory, keys):
    root = tmp_path_factory.mktemp("cli-fleet")
    broker = Broker(root / "broker").start()
    api = FleetApi(root / "api", broker.url, keys.public_path)
    try:
        api.start()
        yield api
    finally:
        api.stop()
        broker.stop()


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    """Never the user's own contexts or environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for var in ("EDGEFLEET_SERVER", "EDGEFLEET_TOKEN", "EDGEFLEET_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables unwrapped, so assertions can read rows
    return tmp_path / "xdg" / "edgefleet" / "config"


@pytest.fixture
def cli(capsys):
    """`edgefleet ARGS` in this process; → exit code, stdout, stderr."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def admin(live, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_SERVER", live.url)
    monkeypatch.setenv("EDGEFLEET_TOKEN", live.admin_token)
    return live


def one_error_line(result: Result) -> str:
    """Failures print exactly one `error:` line on stderr, nothing on stdout, and no traceback."""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err and result.out == ""
    return lines[0]


def route_missing(api: FleetApi, method: str, path: str) -> bool:
    """The server side of `devices label` / `devices config` is being added elsewhere: until then FastAPI answers
    405 (the path exists for other methods) or its own 404 `{"detail": "Not Found"}` (no such path)."""
    r = httpx.request(method, api.url + path, headers={"Authorization": f"Bearer {api.admin_token}"}, json={}, timeout=10)
    return r.status_code == 405 or (r.status_code == 404 and r.json().get("detail") == "Not Found")
