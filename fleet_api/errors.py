"""Errors of the core; the HTTP shell maps each kind to a status code."""


class FleetError(Exception):
    status = 400


class NotFound(FleetError):
    status = 404


class Conflict(FleetError):
    status = 409


class Invalid(FleetError):
    status = 400


class TooLarge(FleetError):
    status = 413


class Unauthorized(FleetError):
    status = 401


class Forbidden(FleetError):
    status = 403


class Unavailable(FleetError):
    """A dependency (the broker) cannot do its part now; nothing was changed."""

    status = 503
