#!/usr/bin/env bash
# Applies a host's staged Alloy files (runs as root, on stdin; loki-stack sets the parameters
# above this script): `alloy validate` checks the new config first and a rejected one changes
# nothing; then the files that differ are put in place and Alloy restarts if one did, if it is
# not running, or if the step runs again for another reason (a renewed certificate: Alloy reads
# its TLS files as systemd credentials, copied at start only). The step fails unless Alloy is
# running afterwards (the unit is Type=notify: a restart returns once Alloy reports ready).
set -euo pipefail
: "${STAGE_DIR:?}" "${CONFIG_FILE:?}" "${DROPIN_FILE:?}" "${DEFAULTS_FILE:?}" "${UNIT:?}"

host=$(hostname -f 2>/dev/null || hostname)
if ! alloy validate "${STAGE_DIR}/config.alloy" >/dev/null; then
  echo "alloy validate rejected the new config on ${host}; nothing changed" >&2
  exit 1
fi
changed=0
place "${STAGE_DIR}/config.alloy" "$CONFIG_FILE" 0640 root alloy
place "${STAGE_DIR}/10-lokistack.conf" "$DROPIN_FILE" 0644 root root
place "${STAGE_DIR}/alloy.defaults" "$DEFAULTS_FILE" 0644 root root
systemctl daemon-reload
systemctl enable --quiet "$UNIT"
echo "restarting ${UNIT} on ${host} (files changed: ${changed})"
if ! systemctl restart "$UNIT" || ! sleep 2 || ! systemctl is-active --quiet "$UNIT"; then
  echo "${UNIT} did not come back on ${host}" >&2
  systemctl status --no-pager "$UNIT" >&2 || true
  journalctl -u "$UNIT" -n 30 --no-pager >&2 || true
  exit 1
fi
