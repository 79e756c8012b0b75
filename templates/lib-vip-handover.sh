# The VIP handover around a Loki restart (components/vip_handover.py says why and how):
#   vip_leave   before Loki stops: the holder drains and hands the VIP to a ready node; any node
#               enters keepalived's FAULT state so that it takes no VIP while it restarts.
#   vip_rejoin  once Loki is ready: leave FAULT (below the holder, with preemption), then wait
#               until a ready node answers on the VIP.
# Parameters: VIP_* (set by loki-stack); the caller's CA_FILE, CERT_FILE and KEY_FILE (a
# certificate of the stack: every role may ask /ready). Needs lib-clock.sh.

# vip_priority NODE: the node's configured VRRP priority.
vip_priority() {
  local entry
  for entry in $VIP_PRIORITIES; do
    if [ "${entry%%=*}" = "$1" ]; then
      echo "${entry#*=}"
      return 0
    fi
  done
  echo "vip_priority: ${1} is not one of the VIP's nodes (${VIP_PRIORITIES})" >&2
  return 1
}

# vip_managed: whether there is a VIP to hand over here: peers exist, and keepalived runs with a
# config that watches the maintenance file (one of an earlier version of the stack does not: the
# node then restarts without a handover, once, until the keepalived step has run).
vip_managed() {
  local count
  count=$(wc -w <<<"$VIP_PRIORITIES")
  [ "$count" -gt 1 ] && systemctl is-active --quiet "$VIP_UNIT" && [ -f "$VIP_CONFIG" ] \
    && grep -qF "\"${VIP_MAINTENANCE_FILE}\"" "$VIP_CONFIG"
}

# vip_here: whether this node has the VIP on its interface now.
vip_here() {
  local addresses
  addresses=$(ip -4 -o addr show dev "$VIP_INTERFACE")
  [[ "$addresses" == *" inet ${VIP_ADDRESS}/"* ]]
}

# vip_holder: the name of the node whose gateway answers /ready on the VIP with 200 (nothing if
# none; "unnamed" from a gateway that does not name its node yet, during an upgrade).
vip_holder() {
  local headers name
  headers=$(curl -sS --max-time 3 -o /dev/null -D - --cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE" \
    "https://${VIP_ADDRESS}:${VIP_PORT}/ready" 2>/dev/null | tr -d '\r') || return 0
  [[ "$headers" =~ ^HTTP/[0-9.]+\ 200 ]] || return 0
  name=$(awk -v h="${VIP_NODE_HEADER,,}:" 'tolower($1) == h { print $2 }' <<<"$headers")
  name=${name%%.*}
  echo "${name:-unnamed}"
}

# vip_mark 0|1: leave or enter keepalived's FAULT state (keepalived watches the file).
vip_mark() {
  printf '%s\n' "$1" >"$VIP_MAINTENANCE_FILE"
}

# vip_marked: whether this node is in maintenance (FAULT) by our hand.
vip_marked() {
  [ -f "$VIP_MAINTENANCE_FILE" ] && [ "$(cat "$VIP_MAINTENANCE_FILE")" != "0" ]
}

vip_drop_new_connections() {
  nft -f - <<EOF
table inet ${VIP_DRAIN_TABLE}
delete table inet ${VIP_DRAIN_TABLE}
table inet ${VIP_DRAIN_TABLE} {
    chain input {
        type filter hook input priority filter - 10; policy accept;
        ip daddr ${VIP_ADDRESS} tcp dport ${VIP_PORT} ct state new drop
    }
}
EOF
}

vip_accept_new_connections() {
  if nft list table inet "${VIP_DRAIN_TABLE}" >/dev/null 2>&1; then
    nft delete table inet "${VIP_DRAIN_TABLE}"
  fi
}

# vip_open_connections: connections to the VIP's port on this node, those still in their TCP
# handshake included: a SYN that arrived just before the drop rule is answered here, and its
# client's request would be cut if the VIP moved before it finished.
vip_open_connections() {
  ss -Htn state established state syn-recv src "${VIP_ADDRESS}:${VIP_PORT}" | wc -l
}

vip_leave() {
  local t0 deadline holder open
  if ! vip_managed; then
    echo "no VIP to hand over on ${VIP_SELF} (a single node, or keepalived is not running)"
    return 0
  fi
  if ! vip_here; then
    vip_mark 1
    echo "${VIP_SELF} does not hold the VIP; it takes none while Loki restarts"
    return 0
  fi
  t0=$EPOCHREALTIME
  # New connections wait (their SYN is sent again); idle keep-alive connections close; requests
  # in flight finish.
  vip_drop_new_connections
  systemctl reload "$VIP_GATEWAY_UNIT"
  deadline=$((SECONDS + VIP_DRAIN_TIMEOUT_S))
  while open=$(vip_open_connections) && [ "$open" -gt 0 ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "${open} connection(s) to the VIP still open on ${VIP_SELF} after ${VIP_DRAIN_TIMEOUT_S}s: they are cut"
      break
    fi
    sleep 0.1
  done
  vip_mark 1
  deadline=$((SECONDS + VIP_HANDOVER_TIMEOUT_S))
  while :; do
    if ! vip_here; then
      holder=$(vip_holder)
      if [ -n "$holder" ] && [ "$holder" != "$VIP_SELF" ]; then
        break
      fi
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      vip_mark 0
      vip_accept_new_connections
      echo "no other ready node took the VIP ${VIP_ADDRESS} from ${VIP_SELF} within ${VIP_HANDOVER_TIMEOUT_S}s" \
        "(is Loki ready on the other nodes, is keepalived running there?); ${VIP_SELF} keeps it and its Loki" \
        "was not restarted" >&2
      return 1
    fi
    sleep 0.1
  done
  vip_accept_new_connections
  echo "VIP handed over from ${VIP_SELF} to ${holder} in $(seconds_since "$t0") s"
}

vip_rejoin() {
  local holder own theirs yield=0 deadline
  if ! vip_managed; then
    return 0
  fi
  holder=$(vip_holder)
  if [ "$VIP_PREEMPT" = 1 ] && [ -n "$holder" ] && [ "$holder" != "$VIP_SELF" ]; then
    own=$(vip_priority "$VIP_SELF")
    theirs=$(vip_priority "$holder" 2>/dev/null) || theirs=""
    if [ -n "$theirs" ] && [ "$own" -ge "$theirs" ]; then
      yield=$((theirs - 1 - own))
    fi
  fi
  printf '%s\n' "$yield" >"$VIP_YIELD_FILE"
  vip_mark 0
  # keepalived's check failed while Loki restarted: until it has passed VIP_CHECK_RISE times the
  # node's priority is still lowered, so the next node's handover would pass it over and the node
  # would take the VIP later with a move of its own.
  sleep $(((VIP_CHECK_RISE + 1) * VIP_CHECK_INTERVAL))
  if [ "$yield" -ne 0 ]; then
    echo "${VIP_SELF} takes part in VRRP again below ${holder} (priority ${own} ${yield}): the VIP stays there"
  else
    echo "${VIP_SELF} takes part in VRRP again"
  fi
  deadline=$((SECONDS + VIP_HANDOVER_TIMEOUT_S))
  until holder=$(vip_holder) && [ -n "$holder" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "no ready node answers on the VIP ${VIP_ADDRESS} after ${VIP_HANDOVER_TIMEOUT_S}s" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "the VIP is on ${holder}, ready"
}
