#!/usr/bin/env bash
# Waits until a service answers its readiness URL over HTTPS, trusting only the stack's CA
# (runs on the host, on stdin; loki-stack sets the parameters above this script).
set -euo pipefail
: "${URL:?}" "${CA_FILE:?}" "${TIMEOUT_S:?}" "${UNIT:?}"

wait_https_ready "$URL" "$TIMEOUT_S" "$UNIT" --cacert "$CA_FILE"
