"""Wave plans: `1,10%,50%,100%` → cumulative device counts for a fleet of N."""

from __future__ import annotations

import math

from ..errors import Invalid


def plan(spec: str | list[str | int], total: int) -> list[int]:
    terms = [str(t).strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if str(t).strip()]
    if not terms:
        raise Invalid("a rollout needs at least one wave")
    counts: list[int] = []
    for term in terms:
        try:
            n = math.ceil(float(term[:-1]) / 100 * total) if term.endswith("%") else int(term)
        except ValueError:
            raise Invalid(f"wave {term!r} is neither a count nor a percentage") from None
        if n < 0 or (term.endswith("%") and not 0 < float(term[:-1]) <= 100):
            raise Invalid(f"wave {term!r} is out of range")
        counts.append(min(total, n))
    if counts != sorted(counts):
        raise Invalid(f"waves must grow: {terms}")
    # The last wave always covers the whole target set, and empty repeats are dropped.
    counts[-1] = total
    out: list[int] = []
    for c in counts:
        if c > (out[-1] if out else 0):
            out.append(c)
    return out or [total]
