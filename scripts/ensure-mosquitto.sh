#!/usr/bin/env bash
# The demo and the tests start their own mosquitto; install it when it is missing and we may.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "mosquitto is missing: installing it with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients >/dev/null || {
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients >/dev/null; }
  exit 0
fi
echo "error: mosquitto (the MQTT broker, version 2) is not installed and this user cannot install it." >&2
echo "       install it with your package manager, e.g. 'sudo apt-get install mosquitto mosquitto-clients'" >&2
exit 2
