# The VIP handover around a Loki restart (components/vip_handover.py says why and how):
#   vip_leave   before Loki stops: the holder drains and hands the VIP to a ready node; any node
#               enters keepalived's FAULT state so that it takes no VIP while it restarts.
#   vip_rejoin  once Loki is ready: leave FAULT (below the holder, with preemption), then wait
#               until a ready node answers on the VIP.
#   vip_recover what an earlier run killed mid-handover left: the drain rule.
# Parameters: VIP_* (set by loki-stack); the caller's CA_FILE, CERT_FILE and KEY_FILE (a
# certificate of the stack: every role may ask /ready). Needs lib-clock.sh. A caller that may call
# vip_leave removes the drain rule on every exit (trap ... EXIT: vip_accept_new_connections).

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

# vip_drop_new_connections: new connections to the VIP on this node are dropped, so that their
# client's TCP sends the SYN again (about a second later, when the VIP is elsewhere). Only a pure
# SYN matches: every packet of a connection opened before, a kept-alive one included, passes
# (nothing here uses connection tracking, whose "new" state also takes in packets of connections it
# never saw open). The address leaves the set by itself after VIP_DRAIN_EXPIRY_S, so that a step
# killed mid-drain cannot leave the node dropping clients for good.
vip_drop_new_connections() {
  nft -f - <<EOF
table inet ${VIP_DRAIN_TABLE}
delete table inet ${VIP_DRAIN_TABLE}
table inet ${VIP_DRAIN_TABLE} {
    set draining {
        type ipv4_addr
        flags timeout
        elements = { ${VIP_ADDRESS} timeout ${VIP_DRAIN_EXPIRY_S}s }
    }
    chain input {
        type filter hook input priority filter - 10; policy accept;
        ip daddr @draining tcp dport ${VIP_PORT} tcp flags & (fin | syn | rst | ack) == syn drop
    }
}
EOF
}

vip_accept_new_connections() {
  if nft list table inet "${VIP_DRAIN_TABLE}" >/dev/null 2>&1; then
    nft delete table inet "${VIP_DRAIN_TABLE}"
  fi
}

# vip_recover: a drain an earlier run left (it was killed mid-handover) goes. A maintenance mark
# stays until Loki is ready again: vip_rejoin clears it.
vip_recover() {
  if nft list table inet "${VIP_DRAIN_TABLE}" >/dev/null 2>&1; then
    nft delete table inet "${VIP_DRAIN_TABLE}"
    echo "removed the drain rule an earlier run left on ${VIP_SELF}"
  fi
}

# vip_ready_peers: the names of the other nodes whose gateway answers /ready with 200 at their own
# address: the nodes that can take the VIP.
vip_ready_peers() {
  local entry status
  for entry in $VIP_PEERS; do
    [ "${entry%%=*}" = "$VIP_SELF" ] && continue
    status=$(curl -sS --max-time 3 -o /dev/null -w '%{http_code}' --cacert "$CA_FILE" --cert "$CERT_FILE" \
      --key "$KEY_FILE" "https://${entry#*=}:${VIP_PORT}/ready" 2>/dev/null || true)
    if [ "$status" = 200 ]; then
      echo "${entry%%=*}"
    fi
  done
}

# vip_open_connections: connections to the VIP's port on this node, those still in their TCP
# handshake included: a SYN that arrived just before the drop rule is answered here, and its
# client's request would be cut if the VIP moved before it finished.
vip_open_connections() {
  ss -Htn state established state syn-recv src "${VIP_ADDRESS}:${VIP_PORT}" | wc -l
}

# vip_leave [CLOSE_IDLE]: hands the VIP over if this node holds it. CLOSE_IDLE (a function; default:
# reload the gateway) makes the server on the VIP's port close its idle keep-alive connections.
vip_leave() {
  local t0 deadline holder open close_idle=${1:-vip_reload_gateway}
  if ! vip_managed; then
    echo "no VIP to hand over on ${VIP_SELF} (a single node, or keepalived is not running)"
    return 0
  fi
  if ! vip_here; then
    vip_mark 1
    echo "${VIP_SELF} does not hold the VIP; it takes none while Loki restarts"
    return 0
  fi
  # Before anything is drained: another node must be able to take the VIP.
  if [ -z "$(vip_ready_peers)" ]; then
    echo "no other node is ready to take the VIP ${VIP_ADDRESS} from ${VIP_SELF}; nothing was drained and" \
      "its Loki was not restarted" >&2
    return 1
  fi
  t0=$EPOCHREALTIME
  # New connections wait (their SYN is sent again); idle keep-alive connections close; requests
  # in flight finish. The caller removes the rule on every exit (vip_accept_new_connections).
  vip_drop_new_connections
  echo "draining the VIP on ${VIP_SELF}: new connections wait, idle ones close, requests in flight finish"
  "$close_idle"
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

# vip_cut_idle_connections: for a server on the VIP's port that cannot be told to close its idle
# keep-alive connections (an earlier version's Loki, which serves the connections it has until it
# exits): within VIP_DRAIN_TIMEOUT_S, each connection to the VIP is cut (ss -K) at a moment it is
# idle: nothing queued either way, and its last request answered (data last sent after data last
# received). Its client learns of it before it sends again, as of a connection the server closed
# while idle, and dials again: the new connection waits for the VIP's next holder.
vip_cut_idle_connections() {
  local deadline=$((SECONDS + VIP_DRAIN_TIMEOUT_S)) peer
  while [ "$(vip_open_connections)" -gt 0 ] && [ "$SECONDS" -lt "$deadline" ]; do
    for peer in $(ss -Htni state established src "${VIP_ADDRESS}:${VIP_PORT}" | awk '
      /^[0-9]/ { queued = $1 + $2; peer = $4; next }
      {
        sent = ""; received = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^lastsnd:/) sent = substr($i, 9)
          if ($i ~ /^lastrcv:/) received = substr($i, 9)
        }
        if (queued == 0 && sent != "" && received != "" && sent + 0 <= received + 0) print peer
      }'); do
      ss -Htn -K state established src "${VIP_ADDRESS}:${VIP_PORT}" dst "$peer" >/dev/null || true
      echo "cut the idle connection of ${peer} to the VIP on ${VIP_SELF}"
    done
    sleep 0.05
  done
}

# vip_reload_gateway: nginx's old workers close their idle keep-alive connections and finish the
# requests in flight.
vip_reload_gateway() {
  systemctl reload "$VIP_GATEWAY_UNIT"
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
