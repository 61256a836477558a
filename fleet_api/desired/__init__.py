"""Desired state: the specs operators set (profiles, device config), the pure composition, and the outbox."""
