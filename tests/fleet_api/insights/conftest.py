"""The database fixtures of the insights tests (helpers.py), for every test in this folder."""

from .helpers import db_sessions, insights_pg  # noqa: F401 - fixtures, requested by name

