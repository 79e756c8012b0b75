#!/usr/bin/env bash
# Applies a host's staged Alloy files (runs as root, on stdin; loki-stack sets the parameters
# above this script): `alloy fmt` checks the new config first and a rejected one changes nothing;
# then the files that differ are put in place and Alloy restarts if one did.
set -euo pipefail
: "${STAGE_DIR:?}" "${CONFIG_FILE:?}" "${DROPIN_FILE:?}" "${UNIT:?}"

if ! alloy fmt "${STAGE_DIR}/config.alloy" >/dev/null; then
  echo "alloy fmt rejected the new config on $(hostname -f 2>/dev/null || hostname); nothing changed" >&2
  exit 1
fi
changed=0
place "${STAGE_DIR}/config.alloy" "$CONFIG_FILE" 0640 root alloy
place "${STAGE_DIR}/10-lokistack.conf" "$DROPIN_FILE" 0644 root root
if [ "$changed" -eq 1 ] || ! systemctl is-active --quiet "$UNIT"; then
  systemctl daemon-reload
  systemctl enable --quiet "$UNIT"
  systemctl restart "$UNIT"
  echo "restarted ${UNIT}"
fi
