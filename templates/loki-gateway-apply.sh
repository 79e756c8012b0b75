#!/usr/bin/env bash
# Applies a Loki node's staged gateway config (runs as root, on stdin; loki-stack sets the
# parameters above this script). `nginx -t` checks the staged file first, alone in a main config
# of its own (certificates and keys included): if nginx rejects it, nothing changes. Then it is
# put in place and nginx reloads: the step also runs when the host's TLS files changed, and nginx
# reads certificates only when it (re)loads. A reload closes the kept-alive connections that are
# idle at that moment: so new connections to the VIP go to the gateway's twin meanwhile, and on the
# VIP holder the kept-alive connections to the VIP end first (vip_reload_gateway). The step ends once the gateway answers on its
# port with the node's certificate.
set -euo pipefail
: "${STAGED:?}" "${TARGET:?}" "${UNIT:?}" "${NGINX_USER:?}" "${PROBE_URL:?}" "${CA_FILE:?}" "${CERT_FILE:?}"
: "${KEY_FILE:?}" "${TIMEOUT_S:?}" "${VIP_RELOAD_TABLE:?}"

# A reload diverts new connections to the VIP for a while, or the holder hands the VIP over first
# (lib-vip-handover.sh): never beyond this run (one EXIT trap, also on these signals), and not
# after an earlier run that was killed.
work=$(mktemp -d)
trap 'rm -rf "$work"; vip_gateway_exit' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
vip_recover "$VIP_RELOAD_TABLE"

host=$(hostname -f 2>/dev/null || hostname)
cat >"${work}/nginx.conf" <<CONF
user ${NGINX_USER};
pid ${work}/nginx.pid;
error_log stderr;
events {}
http {
    include ${STAGED};
}
CONF
if ! nginx -q -t -c "${work}/nginx.conf"; then
  echo "nginx -t rejected the new gateway config on ${host}; nothing changed" >&2
  exit 1
fi

changed=0
place "$STAGED" "$TARGET" 0644 root root
if ! nginx -q -t; then
  echo "nginx -t rejected the whole config on ${host} with the gateway in place" >&2
  exit 1
fi
systemctl enable --quiet "$UNIT"
if systemctl is-active --quiet "$UNIT"; then
  vip_reload_gateway "$UNIT"
else
  systemctl restart "$UNIT"
fi

# 200 once Loki is ready, 502-504 before (Loki's own apply waits for it); 400 or 403 would mean
# the gateway refuses the node's own certificate.
wait_https_status "$PROBE_URL" "$TIMEOUT_S" "$UNIT" "200 502 503 504" "400 403" \
  --cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE"
# Answered by the gateway itself, or by a process that holds its port (lib-gateway-port.sh)?
if ! gateway_serves --cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE"; then
  holders=$(gateway_port_holders)
  if [ "$holders" != loki ]; then
    echo "port ${GATEWAY_PORT} on ${host} is held by ${holders:-nothing}, not the gateway (nginx)" >&2
    exit 1
  fi
  # Loki's own apply moves Loki to its loopback port, and then has nginx take this one.
  echo "port ${GATEWAY_PORT} on ${host} is still held by the Loki of an earlier version; the gateway" \
    "takes it when Loki's apply step has moved Loki behind it"
fi
# Back in VRRP if a handover of this step (or of an earlier run of it, killed) left the node out,
# unless a Loki restart on this node is under way (its apply takes the node back itself).
if vip_marked && ! nft list table inet "$VIP_DRAIN_TABLE" >/dev/null 2>&1 \
  && [ "$(curl -s -o /dev/null -w '%{http_code}' -m 5 --cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE" \
    "$PROBE_URL" || true)" = 200 ]; then
  vip_rejoin
fi
echo "gateway on ${host} in place (files changed: ${changed})"
