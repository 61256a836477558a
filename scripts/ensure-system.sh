#!/usr/bin/env bash
# The demo and the tests start their own mosquitto (and the browser test its own chromium). Install what is
# missing when we may (root with apt-get); otherwise say exactly what to install. Usage: ensure-system.sh TOOL...
set -euo pipefail
declare -A PACKAGES=([mosquitto]="mosquitto mosquitto-clients" [chromium]="chromium")
missing=()
for tool in "$@"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/usr/bin/$tool" ] || missing+=("${PACKAGES[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing with apt-get: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q ${missing[*]} >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q ${missing[*]} >/dev/null; }
  exit 0
fi
echo "error: missing system packages: ${missing[*]} (and this user cannot install them)." >&2
echo "       install them with your package manager, e.g. 'sudo apt-get install ${missing[*]}'" >&2
exit 2
