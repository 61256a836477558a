"""Rollout and member states, and the one table of moves between them that the rollout machine consults."""

from __future__ import annotations

from enum import StrEnum

from ..errors import Conflict


class RolloutState(StrEnum):
    pending = "pending"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    aborted = "aborted"
    rolled_back = "rolled_back"


class MemberState(StrEnum):
    """One device in one rollout."""

    waiting = "waiting"  # its wave has not started
    shadowing = "shadowing"  # shadow mode: its live bundle serves, the rollout's candidate only compares beside it
    notified = "notified"  # its desired state names the rollout's bundle; no verdict yet
    succeeded = "succeeded"  # it reports that model serving the rollout's bundle, golden check passed
    failed = "failed"  # it reports that model failed on the rollout's bundle
    reverted = "reverted"  # the rollout ended badly (abort, rollback): it got its previous bundle back
    removed = "removed"  # revoked meanwhile: the waves are judged without it


ROLLOUT_MOVES: dict[RolloutState, frozenset[RolloutState]] = {
    RolloutState.pending: frozenset({RolloutState.running, RolloutState.aborted}),
    RolloutState.running: frozenset({RolloutState.paused, RolloutState.succeeded, RolloutState.aborted,
                                     RolloutState.rolled_back}),
    RolloutState.paused: frozenset({RolloutState.running, RolloutState.aborted, RolloutState.rolled_back}),
    RolloutState.succeeded: frozenset({RolloutState.rolled_back}),
    RolloutState.aborted: frozenset(),
    RolloutState.rolled_back: frozenset(),
}

MEMBER_MOVES: dict[MemberState, frozenset[MemberState]] = {
    MemberState.waiting: frozenset({MemberState.notified, MemberState.shadowing, MemberState.removed}),
    MemberState.shadowing: frozenset({MemberState.notified, MemberState.failed, MemberState.reverted,
                                      MemberState.removed}),
    MemberState.notified: frozenset({MemberState.succeeded, MemberState.failed, MemberState.reverted, MemberState.removed}),
    MemberState.succeeded: frozenset({MemberState.reverted, MemberState.removed}),
    MemberState.failed: frozenset({MemberState.reverted, MemberState.removed}),
    MemberState.reverted: frozenset(),
    MemberState.removed: frozenset(),
}

ACTIVE = frozenset({RolloutState.pending, RolloutState.running, RolloutState.paused})
FINISHED = frozenset({RolloutState.succeeded, RolloutState.aborted, RolloutState.rolled_back})
# told to take the bundle, or to evaluate it in shadow (an abort gives both their previous assignment back)
MOVED = frozenset({MemberState.notified, MemberState.succeeded, MemberState.failed, MemberState.shadowing})


class InvalidTransition(Conflict):
    """A move the table does not allow (a 409 at the HTTP shell)."""


def check_rollout(rollout_id: int, current: str, target: RolloutState) -> RolloutState:
    state = RolloutState(current)
    if target not in ROLLOUT_MOVES[state]:
        raise InvalidTransition(f"rollout {rollout_id} is {state.value}; it cannot become {target.value}")
    return target


def check_member(device_id: str, current: str, target: MemberState) -> MemberState:
    state = MemberState(current)
    if target not in MEMBER_MOVES[state]:
        raise InvalidTransition(f"device {device_id} is {state.value} in its rollout; it cannot become {target.value}")
    return target


def values(states: frozenset[RolloutState] | frozenset[MemberState]) -> list[str]:
    return sorted(s.value for s in states)
