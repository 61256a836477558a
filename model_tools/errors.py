class UsageError(Exception):
    """A problem with what the user gave us; printed as one line, exit code 2."""
