#!/usr/bin/env bash
# The README's test command: installs what the tests need when it is missing (redis-server for
# the pool-redis tests, redis-cli for the Redis Cluster test, openssl for the TLS test), then
# runs every test of the workspace.
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh -p pool-tests --test chaos`).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing what the tests need: ${need[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi
redis-server --version
redis-cli --version
openssl version

exec cargo test --workspace "$@"
