"""Following a rollout: its progress per wave (pure, from the API's rollout view) and the polling loop.

The loop takes its clock and its sleep as arguments, so tests drive it without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

ACTIVE = ("pending", "running", "paused")
BAD_MEMBER = ("failed",)


@dataclass
class WaveProgress:
    index: int  # 0-based
    size: int  # devices in this wave
    states: dict[str, int] = field(default_factory=dict)
    status: str = "waiting"  # waiting | current | passed | stopped

    @property
    def succeeded(self) -> int:
        return self.states.get("succeeded", 0)

    @property
    def failed(self) -> int:
        return sum(self.states.get(s, 0) for s in BAD_MEMBER)


def waves(rollout: dict) -> list[WaveProgress]:
    """One entry per planned wave; `waves` in the view are cumulative device counts, members carry their wave."""
    cumulative = list(rollout.get("waves") or [])
    sizes = [c - (cumulative[i - 1] if i else 0) for i, c in enumerate(cumulative)]
    rows = [WaveProgress(i, n) for i, n in enumerate(sizes)]
    for member in rollout.get("devices") or []:
        i = member.get("wave", 0)
        while i >= len(rows):  # a view without the plan: grow as members tell
            rows.append(WaveProgress(len(rows), 0))
        rows[i].states[member["state"]] = rows[i].states.get(member["state"], 0) + 1
    current, state = rollout.get("current_wave", 0), rollout.get("state")
    for row in rows:
        if row.index < current or (state == "succeeded"):
            row.status = "passed"
        elif row.index == current:
            row.status = "current" if state in ACTIVE else "stopped"
    return rows


class WatchTimeout(Exception):
    def __init__(self, rollout: dict) -> None:
        super().__init__(f"rollout {rollout.get('id')} is still {rollout.get('state')}")
        self.rollout = rollout


def follow(fetch: Callable[[], dict], on_update: Callable[[dict], None], interval: float = 1.0,
           timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll until the rollout is final (→ its last view) or `timeout` seconds passed (→ WatchTimeout)."""
    deadline = None if timeout is None else clock() + timeout
    while True:
        rollout = fetch()
        on_update(rollout)
        if rollout.get("state") not in ACTIVE:
            return rollout
        if deadline is not None and clock() >= deadline:
            raise WatchTimeout(rollout)
        sleep(interval if deadline is None else max(0.0, min(interval, deadline - clock())))
