"""Exit codes of `edgefleet`, one per kind of outcome, so scripts can branch on them (documented in the README)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # the API refused for another reason (HTTP 4xx not listed below)
    USAGE = 2  # bad command line, unreadable file, no server configured
    AUTH = 3  # HTTP 401 (missing, wrong or revoked token) or 403 (the token's role is too low)
    NOT_FOUND = 4  # HTTP 404
    CONFLICT = 5  # HTTP 409 (e.g. a device already in an active rollout, a version with other bytes)
    INVALID = 6  # HTTP 400 / 413 / 422: the API refused the input
    UNREACHABLE = 7  # no connection, timeout, or the API failed (HTTP 5xx)
    # `rollouts watch` (and `rollouts create --watch`): how the rollout ended
    ROLLOUT_ABORTED = 10
    ROLLOUT_ROLLED_BACK = 11
    WATCH_TIMEOUT = 12  # still pending / running / paused when --timeout passed
    INTERRUPTED = 130  # Ctrl-C


def for_status(status: int) -> ExitCode:
    if status in (401, 403):
        return ExitCode.AUTH
    if status == 404:
        return ExitCode.NOT_FOUND
    if status == 409:
        return ExitCode.CONFLICT
    if status in (400, 413, 422):
        return ExitCode.INVALID
    if status >= 500:
        return ExitCode.UNREACHABLE
    return ExitCode.ERROR


FINAL_STATES = {"succeeded": ExitCode.OK, "aborted": ExitCode.ROLLOUT_ABORTED, "rolled_back": ExitCode.ROLLOUT_ROLLED_BACK}
