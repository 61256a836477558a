"""The CLI's own parts without a server: wave progress, the watch loop on an injected clock, contexts, imports."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from fleet_cli.config import Config, ConfigError, resolve
from fleet_cli.watch import WatchTimeout, follow, waves


def rollout(state: str, current: int, members: list[tuple[int, str]], plan=(1, 3, 4)) -> dict:
    return {"id": 7, "state": state, "current_wave": current, "waves": list(plan),
            "devices": [{"device_id": f"d{i}", "wave": w, "state": s} for i, (w, s) in enumerate(members)]}


def test_waves_count_members_per_wave_from_the_cumulative_plan():
    r = rollout("running", 1, [(0, "succeeded"), (1, "succeeded"), (1, "notified"), (2, "waiting")])
    rows = waves(r)
    assert [(w.size, w.succeeded, w.status) for w in rows] == [(1, 1, "passed"), (2, 1, "current"), (1, 0, "waiting")]
    assert rows[1].states == {"succeeded": 1, "notified": 1}
    aborted = waves(rollout("aborted", 0, [(0, "failed"), (1, "reverted"), (1, "waiting"), (2, "waiting")], plan=(1, 3, 4)))
    assert [(w.failed, w.states, w.status) for w in aborted] == [
        (1, {"failed": 1}, "stopped"), (0, {"reverted": 1, "waiting": 1}, "waiting"), (0, {"waiting": 1}, "waiting")]
    assert all(w.status == "passed" for w in waves(rollout("succeeded", 2, [(0, "succeeded")] * 4)))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_follow_returns_the_final_view_and_polls_at_the_interval():
    clock = FakeClock()
    views = iter([rollout("running", 0, []), rollout("paused", 0, []), rollout("succeeded", 2, [])])
    seen = []
    final = follow(lambda: next(views), lambda r: seen.append(r["state"]), interval=2, clock=clock, sleep=clock.sleep)
    assert final["state"] == "succeeded" and seen == ["running", "paused", "succeeded"] and clock.slept == [2, 2]


def test_follow_gives_up_at_the_timeout_with_the_last_view():
    clock = FakeClock()
    with pytest.raises(WatchTimeout) as exc:
        follow(lambda: rollout("running", 0, []), lambda r: None, interval=1, timeout=2.5, clock=clock, sleep=clock.sleep)
    assert exc.value.rollout["state"] == "running" and clock.slept == [1, 1, 0.5] and clock.now == 2.5


def test_config_is_written_0600_and_resolved_flags_then_env_then_context(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEFLEET_SERVER", raising=False)
    monkeypatch.delenv("EDGEFLEET_TOKEN", raising=False)
    path = tmp_path / "cfg" / "edgefleet" / "config"
    config = Config.load(path)
    with pytest.raises(ConfigError, match="give it a --server"):
        config.set("a", None, "t")
    config.set("a", "http://a:1/", "ta")
    config.set("b", "http://b:2", "tb")
    config.save()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = Config.load(path)
    assert loaded.current == "a" and resolve(loaded).server == "http://a:1"
    assert resolve(loaded, context="b").token == "tb"
    assert loaded.current == "a"  # naming a context for one command does not switch to it
    monkeypatch.setenv("EDGEFLEET_SERVER", "http://env:3")
    assert (resolve(loaded).server, resolve(loaded).token) == ("http://env:3", None)  # a's token stays with a's server
    monkeypatch.setenv("EDGEFLEET_SERVER", "http://a:1")
    assert resolve(loaded).token == "ta"
    monkeypatch.setenv("EDGEFLEET_TOKEN", "te")
    assert resolve(loaded).token == "te"
    assert (resolve(loaded, server="http://flag:4", token="tf").server, resolve(loaded, server="http://flag:4", token="tf").token) == (
        "http://flag:4", "tf")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a valid edgefleet config"):
        Config.load(path)


def test_the_cli_imports_nothing_of_the_server():
    """`pip install 'edgefleet[cli]'` has no FastAPI, SQLAlchemy, paho or onnxruntime: the CLI must not need them."""
    code = ("import sys, fleet_cli.app; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'sqlalchemy', 'paho', 'onnxruntime', 'numpy', 'fleet_api', 'edge_agent', 'model_tools', 'pydantic_settings')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_help_everywhere():
    from fleet_cli.app import main

    for args in (["--help"], ["devices", "--help"], ["rollouts", "watch", "--help"], ["context", "set", "--help"]):
        assert main(args) == 0


def test_piped_output_is_not_squeezed_to_80_columns(monkeypatch, capsys):
    from fleet_cli import output

    monkeypatch.delenv("COLUMNS", raising=False)
    output.fit_to_terminal()  # capsys: stdout is no terminal
    output.table(None, ["device", "labels"], [["d" * 60, "site=" + "x" * 60]])
    row = next(line for line in capsys.readouterr().out.splitlines() if "ddd" in line)
    assert "d" * 60 in row and "x" * 60 in row and "…" not in row
    monkeypatch.setenv("COLUMNS", "50")
    output.fit_to_terminal()
    assert output.out.width == 50
