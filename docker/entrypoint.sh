#!/usr/bin/env bash
# Entrypoint of Dockerfile.ascend: load the Ascend toolkit environment, then run the command.
set -e
if [ ! -f /usr/local/Ascend/ascend-toolkit/set_env.sh ]; then
    echo "entrypoint: /usr/local/Ascend/ascend-toolkit/set_env.sh not found: is this the Ascend base image?" >&2
    exit 1
fi
# shellcheck disable=SC1091
source /usr/local/Ascend/ascend-toolkit/set_env.sh
if [ ! -d /usr/local/Ascend/driver/lib64 ]; then
    echo "entrypoint: warning: no driver at /usr/local/Ascend/driver; mount it with" \
         "-v /usr/local/Ascend/driver:/usr/local/Ascend/driver" >&2
fi
# On aarch64 the OpenMP runtime must be loaded first or paddle fails with "cannot allocate memory in static TLS block".
if [ "$(uname -m)" = "aarch64" ] && [ -f /usr/lib/aarch64-linux-gnu/libgomp.so.1 ]; then
    export LD_PRELOAD="/usr/lib/aarch64-linux-gnu/libgomp.so.1${LD_PRELOAD:+:$LD_PRELOAD}"
fi
exec "$@"
