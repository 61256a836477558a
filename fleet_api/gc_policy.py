"""The API process's garbage collector: tuned once, when it starts serving (`fleet-api serve`).

Telemetry arrives in blocks (the telemetry receiver reads 256 KiB at a time, ~800 messages), and a block's parsed
messages live until the block is rolled up and observed: ~10 container objects each, ~10,000 at once. With
CPython's default threshold (a young collection every 700 net allocations) every block set off a dozen young
collections that moved its still-live messages to the older generations, and so a full collection over the
whole heap (SQLAlchemy, pydantic, the app: 200,000 objects and more) every ~10,000 messages. Measured without
the network (benchmarks/fleet_scale.py's path), a third of the ingest's CPU: 17–20 µs per message of ~40.
Two changes, both standard for a long-running server:
- a young generation larger than a block's working set, so a block's messages are freed by their reference
  counts before any collection sees them;
- the objects alive once the app is built (modules, classes, the app itself) frozen: moved out of the
  collector's sight for good, so the full collections that still happen walk only what came after.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # allocations between young collections: well above a block's ~10,000 live objects


def tune_for_serving() -> None:
    """Once, after the app is built and before it serves: a raised young threshold, and the heap frozen."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
