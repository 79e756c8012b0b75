#!/usr/bin/env bash
# Runs on a new VM over SSH (on stdin; loki-stack sets the parameters above this script) and
# returns once cloud-init has finished its last stage, so that later steps find the admin user,
# the packages and the files it set up. It waits for RESULT_FILE, which cloud-init writes at the
# very end: `cloud-init status --wait` is no proof, as Debian 12's cloud-init (22.4.2) returns at
# the first recorded error while later stages still run. Exit status 0 when cloud-init finished
# without errors and the guest agent runs; 1 otherwise, listing every error cloud-init recorded.
set -euo pipefail
: "${RESULT_FILE:?}" "${TIMEOUT_S:?}"

host=$(hostname -f 2>/dev/null || hostname)
deadline=$((SECONDS + TIMEOUT_S))
until [ -f "$RESULT_FILE" ]; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "cloud-init did not finish on ${host} within ${TIMEOUT_S}s (no ${RESULT_FILE}):" >&2
    cloud-init status --long >&2 || true
    exit 1
  fi
  sleep 1
done

# result.json: {"v1": {"datasource": ..., "errors": [...]}} (newer releases add
# "recoverable_errors": {level: [messages]}, which are warnings).
report=$(python3 - "$RESULT_FILE" <<'PY'
import json, sys
result = json.load(open(sys.argv[1], encoding="utf-8")).get("v1", {})
for error in result.get("errors") or []:
    print(f"error: {error}")
for level, messages in (result.get("recoverable_errors") or {}).items():
    for message in messages:
        print(f"warning ({level}): {message}")
PY
) || { echo "cannot read ${RESULT_FILE} on ${host}" >&2; exit 1; }

if grep -q '^error: ' <<<"$report"; then
  echo "cloud-init failed on ${host}:" >&2
  printf '%s\n' "$report" >&2
  exit 1
fi
echo "cloud-init finished on ${host}"
if [ -n "$report" ]; then
  printf '%s\n' "$report"
fi

if ! systemctl is-active --quiet qemu-guest-agent; then
  echo "qemu-guest-agent is not running on ${host}" >&2
  systemctl status --no-pager qemu-guest-agent >&2 || true
  exit 1
fi
