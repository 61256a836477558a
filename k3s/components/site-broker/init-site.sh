#!/bin/sh
# Builds what the site broker needs at start, in its run folder (an emptyDir):
#  - passwd: every device login of the agents' Secret, hashed (mosquitto_passwd -U);
#  - mosquitto.conf: the ConfigMap's file + the bridge to the central broker with its login.
set -eu
run=/mosquitto/run
: > "$run/passwd"
for f in /run/secrets/edgefleet/mqtt/*; do
    [ -f "$f" ] || continue
    printf '%s:%s\n' "$(basename "$f")" "$(cat "$f")" >> "$run/passwd"
done
mosquitto_passwd -U "$run/passwd"
chmod 0600 "$run/passwd"
site=${EDGEFLEET_SITE:?EDGEFLEET_SITE is not set}
cp /mosquitto/config/mosquitto.conf "$run/mosquitto.conf"
cat >> "$run/mosquitto.conf" <<CONF

# --- the bridge to the centre: desired states and chunks in, device messages out ---
connection central-$site
address ${EDGEFLEET_CENTRAL_BROKER:?EDGEFLEET_CENTRAL_BROKER is not set}
remote_clientid edgefleet-site-$site
remote_username $(cat /run/secrets/edgefleet/bridge/username)
remote_password $(cat /run/secrets/edgefleet/bridge/password)
bridge_cafile /etc/edgefleet/broker-ca/ca.crt
bridge_insecure false
cleansession false
local_cleansession false
bridge_protocol_version mqttv50
try_private true
notifications true
notification_topic \$SYS/edgefleet/bridge/$site/state
notifications_local_only true
keepalive_interval 30
restart_timeout 5 60
topic edgefleet/v1/devices/+/desired in 1
topic edgefleet/v1/devices/+/capture_ack in 1
topic edgefleet/v1/artifacts/# in 1
topic edgefleet/v1/devices/+/reported out 1
topic edgefleet/v1/devices/+/status out 1
topic edgefleet/v1/devices/+/hello out 1
topic edgefleet/v1/devices/+/fetch out 1
topic edgefleet/v1/devices/+/events out 1
topic edgefleet/v1/devices/+/telemetry out 0
topic edgefleet/v1/devices/+/capture out 1
CONF
chmod 0600 "$run/mosquitto.conf"
echo "site broker $site: $(wc -l < "$run/passwd") device logins, bridge to $EDGEFLEET_CENTRAL_BROKER"
