"""The edgefleet contract: MQTT topics, message schemas, the bundle manifest, hashing and signing.

Every deployable imports this package and nothing else of ours; it imports nothing of ours.
"""

PROTOCOL_VERSION = 2  # = messages.SCHEMA
