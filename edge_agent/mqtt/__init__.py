"""The MQTT shell: desired state, hello and chunks in; reported state, fetches, telemetry and events out."""
