#!/usr/bin/env bash
# Waits until a service answers its readiness URL over HTTPS, trusting only the stack's CA
# (runs on the host, on stdin; loki-stack sets the parameters above this script).
set -euo pipefail
: "${URL:?}" "${CA_FILE:?}" "${TIMEOUT_S:?}" "${UNIT:?}"

deadline=$((SECONDS + TIMEOUT_S))
until curl -fsS --max-time 5 --cacert "$CA_FILE" -o /dev/null "$URL"; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "${URL} is not ready after ${TIMEOUT_S}s" >&2
    systemctl status --no-pager "$UNIT" >&2 || true
    exit 1
  fi
  sleep 2
done
echo "${URL} is ready"
