#!/bin/sh
# Creates the dynamic-security JSON on the broker's volume the first time, with the fleet
# API's login as the plugin's admin (the API then creates every device client at run time).
# Later starts keep the file: clients and passwords live there, not in the Secret
# (rotation: k3s/README.md).
set -eu
file=/mosquitto/data/dynamic-security.json
if [ -s "$file" ]; then
    echo "dynamic security: keeping $file"
    exit 0
fi
user=$(cat /run/secrets/edgefleet/mqtt-api-username)
pass=$(cat /run/secrets/edgefleet/mqtt-api-password)
mosquitto_ctrl dynsec init "$file" "$user" "$pass"
chmod 0600 "$file"
echo "dynamic security: created $file with admin client '$user'"
