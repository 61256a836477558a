"""The device's own health, for Telemetry.health: what lets the fleet predict trouble before it happens.

Everything is read from the OS through psutil (and /sys/class/thermal where psutil has no sensors); a reading the
OS does not offer is None, never a made-up zero. Values are clamped to the contract's bounds, so an odd reading
(a sensor saying 400 °C) cannot make the whole telemetry message invalid.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import psutil

from fleet_protocol.files import atomic_write
from fleet_protocol.messages import MAX_COUNT, Health

log = logging.getLogger(__name__)

STARTS_FILE = "agent-starts"  # in data_dir: how often the agent started on this device
THERMAL_ROOT = Path("/sys/class/thermal")
MB = 1024 * 1024
_process = psutil.Process()


def count_start(data_dir: Path) -> int:
    """Record one start of the agent in `data_dir`; returns the restarts before this one (0 on the first start).

    Call once at start-up and pass the result to `collect`. Written atomically, so a crash mid-write never
    resets the count."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STARTS_FILE
    try:
        starts = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        starts = 0
    starts = min(starts + 1, MAX_COUNT)
    atomic_write(path, f"{starts}\n".encode())
    return starts - 1


def collect(data_dir: Path, started_at: float, restarts: int) -> Health:
    """A Health reading now. `started_at` is the agent's start (time.time()), `restarts` from count_start()."""
    disk = _disk(data_dir)
    mem = psutil.virtual_memory()
    try:
        load1 = os.getloadavg()[0]
    except OSError:  # not offered on this OS
        load1 = None
    return Health(
        disk_free_bytes=disk.free if disk else None,
        disk_total_bytes=disk.total if disk else None,
        memory_used_mb=_clamp((mem.total - mem.available) / MB, 0, 1e9),
        memory_total_mb=_clamp(mem.total / MB, 0, 1e9),
        agent_rss_mb=_clamp(_process.memory_info().rss / MB, 0, 1e9),
        # Since the previous call (the previous telemetry window); the very first call says 0.
        cpu_percent=_clamp(psutil.cpu_percent(interval=None), 0, 100 * 1024),
        load1=_clamp(load1, 0, 1e6) if load1 is not None else None,
        temperature_c=temperature(),
        uptime_s=_clamp(time.time() - started_at, 0, 1e10),
        agent_restarts=min(max(restarts, 0), MAX_COUNT),
    )


def _disk(data_dir: Path):
    """Usage of the file system holding the model store (its nearest existing parent before the first start)."""
    path = Path(data_dir).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return psutil.disk_usage(str(path))
    except OSError as exc:
        log.debug("no disk usage for %s: %s", path, exc)
        return None


def temperature(thermal_root: Path = THERMAL_ROOT) -> float | None:
    """The hottest sensor the OS exposes, in °C, or None. psutil first; /sys/class/thermal where it has none
    (Jetson and Raspberry Pi kernels expose their SoC zones only there)."""
    readings: list[float] = []
    sensors = getattr(psutil, "sensors_temperatures", None)  # absent on macOS and Windows
    if sensors is not None:
        try:
            readings = [t.current for entries in sensors().values() for t in entries if t.current is not None]
        except Exception:  # a broken hwmon driver must not break telemetry
            readings = []
    if not readings:
        for zone in sorted(thermal_root.glob("thermal_zone*/temp")):
            try:
                readings.append(int(zone.read_text().strip()) / 1000.0)  # millidegrees
            except (OSError, ValueError):
                continue
    # Disconnected sensors commonly read -273 or 0 / 255; keep what is plausible for a running device.
    plausible = [r for r in readings if -40.0 <= r <= 150.0]
    return _clamp(max(plausible), -100, 300) if plausible else None


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(float(value), lo), hi)
