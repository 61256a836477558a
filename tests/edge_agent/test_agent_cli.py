"""The agent's command line: a local API that cannot be served stops the agent with one line (no half agent)."""

from __future__ import annotations

import socket
import subprocess
import sys

from demo.cluster import free_port


def test_an_agent_whose_http_port_is_taken_exits_with_one_line(tmp_path, keys):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        out = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "run", "--device-id", "cam-1", "--broker", "mqtt://127.0.0.1:1",
             "--data-dir", str(tmp_path / "data"), "--trusted-key", str(keys.public_path), "--http-port", str(port)],
            capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot serve the local API on http://127.0.0.1:{port} (is the port taken?)"]
    assert "Traceback" not in out.stderr
