"""edgefleet edge agent: the daemon on each device."""

__version__ = "0.1.0"
