"""The README's "Using it" block, run as written by bash in an empty folder: model-tools, mosquitto, fleet-api,
edgefleet and edge-agent, a rollout watched to its end, the agent serving, everything stopped by its last line.

Only the ports change (1883, 8000, 8080 → free ones), so that it can run beside other tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from demo.cluster import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def using_it_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Using it"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def commands_on_path(folder: Path) -> str:
    """The venv's console scripts (and mosquitto); `edgefleet` too when the venv predates its entry point (an editable install
    made before pyproject.toml named it)."""
    folder.mkdir()
    if not shutil.which("edgefleet", path=str(Path(sys.executable).parent)):
        shim = folder / "edgefleet"
        shim.write_text(f"#!{sys.executable}\nfrom fleet_cli.app import run\nrun()\n")
        shim.chmod(0o755)
    # mosquitto lives in /usr/sbin on Debian, which a user's PATH may lack
    return os.pathsep.join([str(folder), str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin"])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def listen_port() -> int:
    return free_port()  # below the ephemeral range: the block binds its ports many seconds after they are picked


def test_using_it_runs_as_written(tmp_path):
    script = using_it_block()
    for port in (1883, 8000, 8080):
        assert re.search(rf"\b{port}\b", script), f"the README no longer uses port {port}"
        script = re.sub(rf"\b{port}\b", str(listen_port()), script)
    work = tmp_path / "fresh"
    work.mkdir()
    env = {**os.environ, "PATH": commands_on_path(tmp_path / "bin"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    for var in ("EDGEFLEET_SERVER", "EDGEFLEET_TOKEN", "EDGEFLEET_API_ADMIN_TOKEN"):
        env.pop(var, None)
    log = tmp_path / "out.txt"
    with open(log, "w") as f:  # a file, not a pipe: daemons left running by a failure would hold a pipe open
        proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    left_behind = True
    try:
        proc.wait(timeout=240)
        left_behind = _group_alive(proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left running, if it failed half-way
        except ProcessLookupError:
            pass
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, out[-4000:]
    assert not left_behind, "the block's last line did not stop every process it started"
    assert re.search(r"rollout 1: succeeded", out), out[-4000:]
    assert re.search(r"cam-01\W+site=lab\W+online\W+serving\W+digits 1.0.0\W+CPU\W", out), out[-4000:]
    assert '"ready":true' in out.replace(" ", "")
    assert (Path.home() / ".config").resolve() != (tmp_path / "config").resolve()
    config = tmp_path / "config" / "edgefleet" / "config"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
