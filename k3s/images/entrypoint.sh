#!/bin/sh
# edgefleet image entrypoint: for every variable NAME_FILE=/path in the environment,
# export NAME with the content of that file (the usual *_FILE convention), so that
# Kubernetes can hand secrets over as mounted files instead of environment values.
# A NAME_FILE that points to a missing or unreadable file stops the container with
# a message naming the file.
set -eu
for var in $(env | sed -n 's/^\(EDGEFLEET_[A-Z0-9_]*\)_FILE=.*/\1/p'); do
    eval "path=\${${var}_FILE}"
    if [ ! -r "$path" ]; then
        echo "edgefleet: ${var}_FILE=$path: no such readable file" >&2
        exit 64
    fi
    value=$(cat "$path")
    export "$var=$value"
    unset "${var}_FILE"
done
exec "$@"
