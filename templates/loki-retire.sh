#!/usr/bin/env bash
# Takes a Loki node out of the stack for good, before the other nodes stop counting on it
# (components/loki_retire.py says why in this order). Safe to run again at any point: every part
# looks at what is there first, and a stopped or masked unit stays so.
set -euo pipefail
: "${NODE:?}" "${LOKI_UNIT:?}" "${GATEWAY_UNIT:?}" "${KEEPALIVED_UNIT:?}" "${LEAVE_UNIT:?}" "${REJOIN_UNIT:?}"
: "${DISK_PATH_UNIT:?}" "${DISK_STARTER_UNIT:?}"

# has_unit UNIT: systemd knows a unit file for it (a node whose setup never ran has none).
has_unit() {
  [ -n "$(systemctl show -p FragmentPath --value "$1" 2>/dev/null)" ]
}

# stop_for_good UNIT...: a unit whose file is in /etc/systemd/system (the stack's own units, and
# loki.service, which Grafana's package puts there), which systemctl cannot mask, is stopped and
# disabled; any other unit (nginx, keepalived) is stopped and masked, so that nothing starts it
# again. Nothing else asks for Loki: its disk's starter and the VIP's rejoin unit are disabled too.
stop_for_good() {
  local unit
  for unit in "$@"; do
    if [ -L "/etc/systemd/system/${unit}" ] && [ "$(readlink "/etc/systemd/system/${unit}")" = /dev/null ]; then
      continue  # masked by an earlier run
    fi
    if [ -f "/etc/systemd/system/${unit}" ]; then
      systemctl disable --now --quiet "$unit"
    elif has_unit "$unit"; then
      systemctl stop "$unit"
      systemctl mask --quiet "$unit"
    else
      systemctl mask --quiet "$unit"  # never installed: it never will start either
    fi
  done
}

# 1. The VIP. Stopping the leave unit does what a shutdown does: the holder hands the VIP over with
#    a drain (its kept-alive clients move without a failed push); any other node enters FAULT.
if systemctl is-active --quiet "$LEAVE_UNIT"; then
  echo "${NODE}: leaving the VIP (the holder hands it over with a drain)"
  systemctl stop "$LEAVE_UNIT"
fi
stop_for_good "$REJOIN_UNIT" "$LEAVE_UNIT" "$KEEPALIVED_UNIT"

# 2. Loki. Its stop flushes the ingester's chunks to the object store and takes the node out of the
#    ring (flush_on_shutdown, unregister_on_shutdown), while every other node still lets it in.
#    First what would start it again: the disk's arrival units.
stop_for_good "$DISK_PATH_UNIT" "$DISK_STARTER_UNIT"
if systemctl is-active --quiet "$LOKI_UNIT"; then
  echo "${NODE}: stopping Loki: it flushes its chunks and leaves the ring"
  systemctl stop "$LOKI_UNIT"
  result=$(systemctl show -p Result --value "$LOKI_UNIT")
  if [ "$result" != success ]; then
    # Killed at its stop bound: what it did not flush is on the other replicas (replication factor 3).
    echo "${NODE}: Loki's stop ended with ${result}; its ring entry may stay until Loki's peers forget it" >&2
  fi
fi
stop_for_good "$LOKI_UNIT"

# 3. The gateway: the other nodes' gateways may still forward to it until their next step.
stop_for_good "$GATEWAY_UNIT"
echo "${NODE} retired: Loki, its gateway and keepalived are stopped and will not start again"
