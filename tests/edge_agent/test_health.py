"""Device health read from the real machine, carried by a real Telemetry v2 message."""

from __future__ import annotations

import os
import time

import psutil

from edge_agent import health
from fleet_protocol.messages import Telemetry


def test_collect_reads_this_machine(tmp_path):
    data_dir = tmp_path / "data"
    restarts = health.count_start(data_dir)
    started = time.time() - 42.0
    h = health.collect(data_dir, started, restarts)
    disk = psutil.disk_usage(str(data_dir))
    assert h.disk_total_bytes == disk.total and 0 < h.disk_free_bytes <= h.disk_total_bytes
    assert abs(h.disk_free_bytes - disk.free) < 256 * 1024**2  # other helpers write meanwhile
    assert 0 < h.memory_used_mb < h.memory_total_mb
    assert abs(h.memory_total_mb - psutil.virtual_memory().total / 2**20) < 1
    # this test process is the "agent": its RSS is what psutil says about us, at least the interpreter's size
    assert 10 < h.agent_rss_mb < h.memory_total_mb
    assert h.load1 == os.getloadavg()[0] or abs(h.load1 - os.getloadavg()[0]) < 5
    assert 42.0 <= h.uptime_s < 42.0 + 60
    assert h.agent_restarts == 0 and h.cpu_percent is not None
    # where the OS offers no sensor (this VM has none) it is None, never a made-up number
    assert h.temperature_c is None or -40 <= h.temperature_c <= 150

    # the reading travels in the real wire message and back unchanged
    wire = Telemetry(window_s=10, health=h).to_bytes()
    assert Telemetry.parse(wire).health == h


def test_restarts_are_counted_in_the_data_dir(tmp_path):
    assert [health.count_start(tmp_path) for _ in range(3)] == [0, 1, 2]
    assert (tmp_path / health.STARTS_FILE).read_text().strip() == "3"
    (tmp_path / health.STARTS_FILE).write_text("garbage")  # a damaged file restarts the count, not the agent
    assert health.count_start(tmp_path) == 0
    h = health.collect(tmp_path / "not" / "created" / "yet", time.time(), 2)
    assert h.agent_restarts == 2 and h.disk_total_bytes == psutil.disk_usage(str(tmp_path)).total


def test_temperature_from_sys_class_thermal(tmp_path, monkeypatch):
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)
    for i, milli in enumerate(["45500", "61000", "-273000", "junk"]):
        (tmp_path / f"thermal_zone{i}").mkdir()
        (tmp_path / f"thermal_zone{i}" / "temp").write_text(milli + "\n")
    assert health.temperature(tmp_path) == 61.0  # the hottest plausible zone; the disconnected one is ignored
    assert health.temperature(tmp_path / "none") is None


def test_the_agent_counts_its_starts_once_and_reports_health(tmp_path, keys):
    """The agent records its start once (at construction) and every telemetry window carries that count."""
    from edge_agent.agent import Agent
    from edge_agent.settings import AgentSettings

    settings = AgentSettings(device_id="dev-h", data_dir=tmp_path / "data", trusted_keys=str(keys.public_path))
    first = Agent(settings)
    assert first.restarts == 0 and first.health().agent_restarts == 0
    second = Agent(settings)  # the process started again on the same device
    h = second.health()
    assert h is not None and h.agent_restarts == 1 and h.disk_total_bytes and h.memory_total_mb and h.uptime_s is not None
    assert second.health().agent_restarts == 1  # collecting does not count a start
