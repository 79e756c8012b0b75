#!/usr/bin/env bash
# Applies a Loki node's staged files (runs as root, on stdin; loki-stack sets the parameters
# above this script). The staged config is checked with `loki -verify-config` first: if Loki
# rejects it, nothing is changed and the running service keeps its old config. Otherwise the
# files that differ are put in place; when one did (or the version changed, or the TLS files
# differ from those the running Loki started with), the node hands the VIP over if it holds it
# (lib-vip-handover.sh) and Loki restarts; the step ends once the node answers /ready over HTTPS
# with a client certificate and a ready node holds the VIP, so that the next node only restarts
# after this one is ready again.
set -euo pipefail
: "${STAGE_DIR:?}" "${CONFIG_FILE:?}" "${ENV_FILE:?}" "${DROPIN_FILE:?}" "${UNIT:?}" "${READY_URL:?}"
: "${CA_FILE:?}" "${CERT_FILE:?}" "${KEY_FILE:?}" "${TIMEOUT_S:?}" "${BUILDINFO_URL:?}" "${CREDENTIALS_DIR:?}"

host=$(hostname -f 2>/dev/null || hostname)
(
  set -a
  # shellcheck disable=SC1090,SC1091  # the env file is delivered by loki-stack
  . "${STAGE_DIR}/lokistack.env"
  set +a
  loki -config.file="${STAGE_DIR}/config.yml" -config.expand-env=true -verify-config
) || {
  echo "loki -verify-config rejected the new config on ${host}; the running service is untouched" >&2
  exit 1
}

changed=0
place "${STAGE_DIR}/config.yml" "$CONFIG_FILE" 0640 root loki
place "${STAGE_DIR}/lokistack.env" "$ENV_FILE" 0600 root root
place "${STAGE_DIR}/10-lokistack.conf" "$DROPIN_FILE" 0644 root root

curl_tls=(--cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE")
installed=$(dpkg-query -W -f='${Version}' loki)
installed=${installed%-*}  # the Debian revision (3.7.6-1) is not part of Loki's own version
running=$(curl -fsS --max-time 5 "${curl_tls[@]}" "$BUILDINFO_URL" 2>/dev/null \
  | sed -n 's/.*"version":"\([^"]*\)".*/\1/p' || true)
# Loki reads its TLS files once, at start (systemd credentials): a renewed certificate on disk
# that differs from what the running Loki got needs a restart.
renewed=0
for credential in "server.pem:${CERT_FILE}" "server.key:${KEY_FILE}" "ca.pem:${CA_FILE}"; do
  if ! cmp -s "${CREDENTIALS_DIR}/${credential%%:*}" "${credential#*:}"; then
    renewed=1
  fi
done
if [ "$changed" -eq 1 ] || [ "$renewed" -eq 1 ] || [ "$running" != "$installed" ] \
  || ! systemctl is-active --quiet "$UNIT"; then
  systemctl daemon-reload
  systemctl enable --quiet "$UNIT"
  echo "restarting ${UNIT} on ${host} (files changed: ${changed}, TLS files renewed: ${renewed}," \
    "running: ${running:-none}, installed: ${installed})"
  if systemctl is-active --quiet "$UNIT"; then
    # A running node first hands the VIP over (lib-vip-handover.sh): no client sees the restart.
    vip_leave
    t0=$EPOCHREALTIME
    systemctl stop "$UNIT"
    echo "${UNIT} stopped on ${host} in $(seconds_since "$t0") s"
  fi
  t0=$EPOCHREALTIME
  systemctl start "$UNIT"
  wait_https_ready "$READY_URL" "$TIMEOUT_S" "$UNIT" "${curl_tls[@]}"
  echo "${UNIT} ready on ${host} $(seconds_since "$t0") s after its start"
else
  wait_https_ready "$READY_URL" "$TIMEOUT_S" "$UNIT" "${curl_tls[@]}"
fi
# Back in VRRP once Loki is ready (also after an earlier run that failed between the two).
if vip_marked; then
  vip_rejoin
fi
