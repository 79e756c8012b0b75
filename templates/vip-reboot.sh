#!/usr/bin/env bash
# A Loki node's part in the VIP across a shutdown and a boot (components/vip_reboot.py says why).
# Installed on the node and run by two units, never by a step (loki-stack sets the parameters
# above this script):
#   vip-reboot leave   lokistack-vip-leave.service's stop, at shutdown before the gateway, Loki and
#                      keepalived stop: the holder hands the VIP over with a drain; any node
#                      enters FAULT and takes no VIP on its way down.
#   vip-reboot rejoin  lokistack-vip-rejoin.service, at boot: the node booted in FAULT (the
#                      maintenance file holds BOOT_MARK); once its Loki is ready it takes part in
#                      VRRP again, below the holder with preemption, so that the VIP stays where it is.
# Safe to run again at any point: leave ends any drain it began (also when killed: the EXIT trap,
# and the drain's own expiry), rejoin acts only while the boot mark is there.
set -euo pipefail
: "${LOKI_READY_URL:?}" "${BOOT_MARK:?}" "${CA_FILE:?}" "${CERT_FILE:?}" "${KEY_FILE:?}"

# booted_in_fault: the maintenance file still holds the mark the boot put there (no step has
# marked the node since).
booted_in_fault() {
  [ "$(cat "$VIP_MAINTENANCE_FILE" 2>/dev/null || true)" = "$BOOT_MARK" ]
}

case "${1:-}" in
  leave)
    trap 'vip_accept_new_connections "$VIP_DRAIN_TABLE"' EXIT
    trap 'exit 143' TERM
    if ! vip_leave; then
      echo "${VIP_SELF} shuts down without handing the VIP over: keepalived's stop moves it" >&2
    fi
    ;;
  rejoin)
    if ! booted_in_fault; then
      echo "${VIP_SELF} did not boot in the VIP's FAULT state (${VIP_MAINTENANCE_FILE}:" \
        "$(cat "$VIP_MAINTENANCE_FILE" 2>/dev/null || echo none)): nothing to do"
      exit 0
    fi
    echo "${VIP_SELF} booted in the VIP's FAULT state; it takes part in VRRP once its Loki is ready"
    t0=$EPOCHREALTIME
    told=$SECONDS
    # No deadline: Loki may wait for its data disk (lokistack-data-disk-loki.path starts it).
    until curl -fsS --max-time 5 -o /dev/null --cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE" \
      "$LOKI_READY_URL" 2>/dev/null; do
      if [ $((SECONDS - told)) -ge 300 ]; then
        echo "${VIP_SELF}: Loki is not ready $(seconds_since "$t0") s after boot; still in FAULT"
        told=$SECONDS
      fi
      sleep 2
    done
    echo "${VIP_SELF}: Loki ready $(seconds_since "$t0") s after this unit started"
    vip_lock
    if ! booted_in_fault; then
      echo "${VIP_SELF}: a step marked the node meanwhile (${VIP_MAINTENANCE_FILE}:" \
        "$(cat "$VIP_MAINTENANCE_FILE" 2>/dev/null || echo none)); it rejoins the VIP itself"
      exit 0
    fi
    if vip_managed; then
      vip_rejoin
    else
      # A single node, or keepalived not running: nothing to rejoin; a later start of keepalived
      # must not find the node in FAULT.
      vip_mark 0
      echo "${VIP_SELF} left the boot's FAULT state (no VIP to share here now)"
    fi
    vip_unlock
    ;;
  *)
    echo "usage: $0 leave|rejoin" >&2
    exit 2
    ;;
esac
