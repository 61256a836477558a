"""SIGTERM, as a supervisor (systemd, kubelet, a CI runner) sends it: every daemon cleans up and exits 0, and
`python -m demo` stops everything it started, as on Ctrl-C. Afterwards nothing is left: no member of any child's
process group, no process naming the demo's folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from demo.cluster import EdgeAgent, FleetApi, wait_for

from .test_demo_path import processes_mentioning

pytestmark = pytest.mark.e2e


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def terminate(service) -> int:
    """SIGTERM to the daemon alone (not its group), as `kill PID` does; → its exit code."""
    proc = service.process.proc
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    assert not group_alive(proc.pid), f"{service.process.name} left processes behind"
    return code


def test_daemons_exit_0_after_cleanup_on_sigterm(tmp_path, keys, broker):
    api = FleetApi(tmp_path / "api", broker.url, keys.public_path)
    agent = EdgeAgent(tmp_path / "agent", "sig-1", broker.url, keys.public_path)
    try:
        api.start()
        with api.client() as c:
            c.post("/v1/devices", json={"id": "sig-1", "labels": {}}).raise_for_status()
        agent.start()
        with api.client() as c:
            wait_for(lambda: c.get("/v1/devices/sig-1").json()["online"], 30, "the agent online")

        assert terminate(agent) == 0, agent.process.tail()
        # The agent said goodbye on its way out (its cleanup ran): the API sees it offline.
        with api.client() as c:
            wait_for(lambda: c.get("/v1/devices/sig-1").json()["online"] is False, 30, "the agent offline")

        assert terminate(api) == 0, api.process.tail()
        assert "Application shutdown complete" in api.process.log_path.read_text()  # the lifespan's cleanup ran
    finally:
        agent.stop()
        api.stop()


def test_demo_stops_everything_it_started_on_sigterm(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "demo", "--work-dir", str(work)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "300"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        # Printed once the broker, the API and three agents run: the moment with the most to clean up.
        sign_in = wait_for(lambda: next((line for line in lines if line.startswith("Dashboard:")), None), 240,
                           "the demo's fleet to start")
        url, token = re.search(r"(http://127\.0\.0\.1:\d+/)\s+sign in with the admin token (\S+)", sign_in).groups()
        assert httpx.get(f"{url}v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["role"] == "admin"
        started = processes_mentioning(str(work))
        assert len(started) >= 5, started  # mosquitto, the API, three agents

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert processes_mentioning(str(work)) == []
    assert all(not group_alive(pid) for pid in started)
