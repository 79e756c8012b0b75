#!/usr/bin/env bash
# Applies a Loki node's staged files (runs as root, on stdin; loki-stack sets the parameters
# above this script). Safe to run again after it failed or was killed at any line: what it does is
# decided by comparing what runs with what should run, never by what this run placed.
#
# 1. What an earlier run left mid-handover goes (a drain rule; it also expires by itself).
# 2. The staged config is checked with `loki -verify-config`: if Loki rejects it, nothing changes.
# 3. Loki restarts when what it runs differs from what should run: the config, env file and drop-in
#    it started with (STARTED_RECORD, written by the unit at each start), a drop-in systemd has not
#    loaded, the TLS files it got as credentials, its version, or it does not run at all.
# 4. Before a running Loki stops, the cluster must be able to lose it (lib-ring-check.sh): every
#    other node ACTIVE in the ring and ready, and seeing the nodes that stay ACTIVE in its own
#    view; otherwise, after a bounded wait, the step fails and
#    nothing is placed or restarted: the next run finds the same difference and finishes the job.
# 5. The files are placed, the node hands the VIP over if it holds it (lib-vip-handover.sh) or
#    takes none while Loki (re)starts, Loki restarts (if an earlier version's Loki holds the
#    gateway's port, it stops only once the gateway is in place, the drain cuts its kept-alive
#    connections while they are idle, and nginx takes the port the moment Loki lets go of it), and
#    the step ends once the node answers /ready over HTTPS with a client certificate, the gateway
#    serves its port (lib-gateway-port.sh), the node takes part in VRRP again, and a ready node
#    holds the VIP.
set -euo pipefail
: "${STAGE_DIR:?}" "${CONFIG_FILE:?}" "${ENV_FILE:?}" "${DROPIN_FILE:?}" "${UNIT:?}" "${READY_URL:?}"
: "${CA_FILE:?}" "${CERT_FILE:?}" "${KEY_FILE:?}" "${TIMEOUT_S:?}" "${BUILDINFO_URL:?}" "${CREDENTIALS_DIR:?}"
: "${STARTED_RECORD:?}" "${GATEWAY_CONFIG:?}" "${GATEWAY_UNIT:?}" "${GATEWAY_WAIT_S:?}"

# A drain this run starts never outlives it (the EXIT trap also runs on these signals).
trap 'vip_accept_new_connections "$VIP_DRAIN_TABLE"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

host=$(hostname -f 2>/dev/null || hostname)
vip_recover "$VIP_DRAIN_TABLE"
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

curl_tls=(--cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE")
# gateway_lacks_port: this node has a running gateway, and nginx does not hold its port (whatever
# config nginx runs: the gateway's own step, which may run beside this one, reloads it with its own).
gateway_lacks_port() {
  [ -f "$GATEWAY_CONFIG" ] && systemctl is-active --quiet "$GATEWAY_UNIT" && ! gateway_port_holders | grep -qx nginx
}
# Why Loki must restart, from what runs compared with what should run (empty: it need not).
reasons=()
if ! systemctl is-active --quiet "$UNIT"; then
  reasons+=("not running")
else
  should=$(sha256sum "${STAGE_DIR}/config.yml" "${STAGE_DIR}/lokistack.env" "${STAGE_DIR}/10-lokistack.conf" \
    | cut -d ' ' -f 1)
  if [ "$(cat "$STARTED_RECORD" 2>/dev/null || true)" != "$should" ]; then
    reasons+=("its config, env file or drop-in is not the one it started with")
  fi
  if [ "$(systemctl show -p NeedDaemonReload --value "$UNIT")" = yes ]; then
    reasons+=("systemd has not loaded its unit files as they are on disk")
  fi
  # Loki reads its TLS files once, at start (systemd credentials).
  for credential in "server.pem:${CERT_FILE}" "server.key:${KEY_FILE}" "ca.pem:${CA_FILE}"; do
    if ! cmp -s "${CREDENTIALS_DIR}/${credential%%:*}" "${credential#*:}"; then
      reasons+=("${credential#*:} is not the file it started with")
    fi
  done
  installed=$(dpkg-query -W -f='${Version}' loki)
  installed=${installed%-*}  # the Debian revision (3.7.6-1) is not part of Loki's own version
  running=$(curl -fsS --max-time 5 "${curl_tls[@]}" "$BUILDINFO_URL" 2>/dev/null \
    | sed -n 's/.*"version":"\([^"]*\)".*/\1/p' || true)
  if [ "$running" != "$installed" ]; then
    reasons+=("it runs version ${running:-unknown}, ${installed} is installed")
  fi
fi

# stop_loki_for_the_gateway: stops Loki (in the background: $stopping) and has nginx take the
# gateway's port the moment Loki lets go of it (as it exits), so the port is dead only for as long
# as nginx takes to bind it; until this Loki is ready, the gateway sends what it takes to the peers.
stop_loki_for_the_gateway() {
  systemctl stop "$UNIT" &
  stopping=$!
  until ! gateway_port_holders | grep -qx loki; do
    sleep 0.05
  done
  gateway_take_port "$GATEWAY_UNIT"
}

# An earlier version's Loki on the gateway's port (an upgrade from before the gateway) stops only
# once the gateway can take the port at once: its config in place and nginx running (the gateway's
# own steps, which run beside this one, put them there). Until then nothing is placed.
old_loki_on_port=no
if [ "${#reasons[@]}" -gt 0 ] && systemctl is-active --quiet "$UNIT" && gateway_port_holders | grep -qx loki; then
  old_loki_on_port=yes
  deadline=$((SECONDS + GATEWAY_WAIT_S))
  until [ -f "$GATEWAY_CONFIG" ] && systemctl is-active --quiet "$GATEWAY_UNIT"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "Loki on ${host} holds the gateway's port ${GATEWAY_PORT} (an earlier version), and the gateway" \
        "(${GATEWAY_CONFIG}, ${GATEWAY_UNIT}) is not there after ${GATEWAY_WAIT_S}s: Loki keeps running;" \
        "nothing was placed or restarted; the next run finishes the job once the gateway's steps succeeded" >&2
      exit 1
    fi
    sleep 1
  done
fi

if [ "${#reasons[@]}" -gt 0 ] && systemctl is-active --quiet "$UNIT"; then
  # A running node stops only when the cluster can lose it; until then nothing is placed.
  if ! ring_wait_safe_to_stop; then
    echo "nothing was placed or restarted on ${host}; the new files stay staged for the next run" >&2
    exit 1
  fi
fi

changed=0
place "${STAGE_DIR}/config.yml" "$CONFIG_FILE" 0640 root loki
place "${STAGE_DIR}/lokistack.env" "$ENV_FILE" 0600 root root
place "${STAGE_DIR}/10-lokistack.conf" "$DROPIN_FILE" 0644 root root

if [ "${#reasons[@]}" -gt 0 ]; then
  systemctl daemon-reload
  systemctl enable --quiet "$UNIT"
  reason_list=$(printf '%s; ' "${reasons[@]}")
  echo "restarting ${UNIT} on ${host}: ${reason_list%; }"
  if systemctl is-active --quiet "$UNIT"; then
    # A running node first hands the VIP over (lib-vip-handover.sh): no client sees the restart.
    # (Where an earlier version's Loki serves the VIP's port itself, it serves its connections
    # until it exits: the drain cuts each kept-alive connection right after an answer instead.)
    vip_leave
    t0=$EPOCHREALTIME
    if [ "$old_loki_on_port" = yes ]; then
      stop_loki_for_the_gateway
      wait "$stopping"
    else
      systemctl stop "$UNIT"
    fi
    echo "${UNIT} stopped on ${host} in $(seconds_since "$t0") s"
  elif vip_managed && { ! vip_here || [ -z "$(vip_ready_peers)" ]; }; then
    # Not running (a first start: keepalived runs before Loki; a stopped Loki): the node takes no
    # VIP until its Loki is ready, then rejoins (vip_rejoin, below) and the step ends once a ready
    # node holds the VIP. Otherwise its check, passing after this step, would take the VIP by
    # preemption with no drain. A holder keeps the VIP where another node is ready: its gateway
    # sends there meanwhile. (Where none is, the VIP serves no one yet: the first Loki of a first
    # deploy starts so, and takes the VIP before its step ends.)
    vip_mark 1
    echo "${host} takes no VIP until its Loki is ready"
  fi
  t0=$EPOCHREALTIME
  systemctl start "$UNIT"
  echo "${UNIT} started on ${host}; waiting until it is ready"
  wait_https_ready "$READY_URL" "$TIMEOUT_S" "$UNIT" "${curl_tls[@]}"
  echo "${UNIT} ready on ${host} $(seconds_since "$t0") s after its start"
else
  wait_https_ready "$READY_URL" "$TIMEOUT_S" "$UNIT" "${curl_tls[@]}"
fi
# The gateway serves its port (lib-gateway-port.sh): after an upgrade from a version whose Loki
# held it, nginx was reloaded while it could not bind; once Loki has let go of it, it can.
if gateway_lacks_port; then
  gateway_take_port "$GATEWAY_UNIT"
fi
# Back in VRRP once Loki is ready (also after an earlier run that failed between the two).
if vip_marked; then
  vip_rejoin
fi
echo "Loki on ${host} runs what it should (files placed now: ${changed}, restarted: $([ "${#reasons[@]}" -gt 0 ] && echo yes || echo no))"
