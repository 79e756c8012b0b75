#!/usr/bin/env bash
# Applies a Loki node's staged runtime configuration, the limits Loki reloads without a restart
# (runs as root, on stdin; loki-stack sets the parameters above this script). Loki only logs a
# bad file at a reload (keeping its old limits) but will not start with one, and
# `loki -verify-config` never reads it. So the staged file is checked first: it may hold only the
# overrides of the tenant, and those limits, put into a copy of the node's config, must pass
# `loki -verify-config`. Then it is put in place, and if the running Loki reads it, the step waits
# until Loki has reloaded it (the runtime-config hash changed, the reload succeeded); if Loki
# refuses it, the previous file is put back and the step fails.
set -euo pipefail
: "${STAGED:?}" "${STAGED_CONFIG:?}" "${STAGED_ENV:?}" "${RUNTIME_FILE:?}" "${TENANT:?}" "${UNIT:?}"
: "${LOKI_URL:?}" "${CA_FILE:?}" "${CERT_FILE:?}" "${KEY_FILE:?}" "${TIMEOUT_S:?}"

host=$(hostname -f 2>/dev/null || hostname)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$STAGED" "$STAGED_CONFIG" "$TENANT" >"${work}/check.yml" <<'PY'
import sys

import yaml

runtime_path, config_path, tenant = sys.argv[1:]
with open(runtime_path) as f:
    runtime = yaml.safe_load(f)
overrides = runtime.get("overrides") if isinstance(runtime, dict) else None
if set(runtime or {}) != {"overrides"} or not isinstance(overrides, dict) or set(overrides) != {tenant} \
        or not isinstance(overrides[tenant], dict):
    sys.exit(f"{runtime_path} must hold only 'overrides:' for the tenant {tenant!r}, got: {runtime!r}")
with open(config_path) as f:
    config = yaml.safe_load(f)
config.setdefault("limits_config", {}).update(overrides[tenant])
yaml.safe_dump(config, sys.stdout, sort_keys=False)
PY
(
  set -a
  # shellcheck disable=SC1090,SC1091  # the env file is delivered by loki-stack
  . "$STAGED_ENV"
  set +a
  loki -config.file="${work}/check.yml" -config.expand-env=true -verify-config
) || {
  echo "loki -verify-config rejected the limits in ${STAGED} on ${host}; nothing changed" >&2
  exit 1
}

curl_tls=(--cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE")
# runtime_state: "<hash> <last reload successful>" of the running Loki.
runtime_state() {
  local metrics
  metrics=$(curl -fsS --max-time 5 "${curl_tls[@]}" "${LOKI_URL}/metrics") || return 1
  awk '/^loki_runtime_config_hash[{]/ { match($0, /sha256="[0-9a-f]+"/); h = substr($0, RSTART + 8, RLENGTH - 9) }
       /^loki_runtime_config_last_reload_successful[{ ]/ { ok = $NF }
       END { print h, ok }' <<<"$metrics"
}

# Only a running Loki whose config names this file reloads it (on an upgrade from a config
# without it, the apply step's restart reads it).
reloads=0
if systemctl is-active --quiet "$UNIT"; then
  running_config=$(curl -fsS --max-time 5 "${curl_tls[@]}" "${LOKI_URL}/config" || true)
  if [[ $'\n'"$running_config"$'\n' == *$'\n'"  file: ${RUNTIME_FILE}"$'\n'* ]]; then
    reloads=1
    before=$(runtime_state)
  fi
fi
if [ -f "$RUNTIME_FILE" ]; then
  cp -p "$RUNTIME_FILE" "${work}/previous"
fi

changed=0
place "$STAGED" "$RUNTIME_FILE" 0640 root loki
if [ "$changed" -eq 0 ] || [ "$reloads" -eq 0 ]; then
  echo "runtime config on ${host}: ${RUNTIME_FILE} $([ "$changed" -eq 1 ] && echo placed || echo unchanged)," \
    "$([ "$reloads" -eq 1 ] && echo "Loki has it" || echo "Loki reads it when it starts")"
  exit 0
fi

t0=$EPOCHREALTIME
deadline=$((SECONDS + TIMEOUT_S))
while :; do
  now=$(runtime_state || echo "unknown unknown")
  if [ "${now% *}" != "${before% *}" ] && [ "${now#* }" = "1" ]; then
    echo "runtime config on ${host}: Loki reloaded it $(seconds_since "$t0") s after it was placed, without a restart"
    exit 0
  fi
  if [ "${now#* }" = "0" ] || [ "$SECONDS" -ge "$deadline" ]; then
    if [ -f "${work}/previous" ]; then
      safe_replace "${work}/previous" "$RUNTIME_FILE" root loki 0640
    fi
    echo "Loki on ${host} did not take the new runtime config within ${TIMEOUT_S}s (reload state: ${now});" \
      "the previous file is back in place:" >&2
    journalctl -u "$UNIT" --since "-$((TIMEOUT_S + 5))s" --no-pager 2>/dev/null | grep -i "runtime" | tail -5 >&2 || true
    exit 1
  fi
  sleep 0.5
done
