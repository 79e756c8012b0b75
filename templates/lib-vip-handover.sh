# The VIP handover around a Loki restart (components/vip_handover.py says why and how):
#   vip_leave   before Loki stops: the holder drains and hands the VIP to a ready node; any node
#               enters keepalived's FAULT state so that it takes no VIP while it restarts.
#   vip_rejoin  once Loki is ready: leave FAULT (below the holder, with preemption), then wait
#               until a ready node answers on the VIP.
#   vip_recover what an earlier run killed mid-handover left: the drain rule.
#   vip_reload_gateway  nginx reloads without closing a kept-alive connection under a client.
# A node's gateway apply and Loki apply run side by side; a drain of one and a drain of the other
# never overlap (vip_lock).
# Parameters: VIP_* (set by loki-stack); the caller's CA_FILE, CERT_FILE and KEY_FILE (a
# certificate of the stack: every role may ask /ready). Needs lib-clock.sh. A caller that may call
# vip_leave removes the drain rule on every exit (trap ... EXIT: vip_accept_new_connections).

# vip_priority NODE: the node's configured VRRP priority.
vip_priority() {
  vip_node_value "$1" "$VIP_PRIORITIES"
}

# vip_yield_level NODE: the priority the node takes while it yields (below every configured one).
vip_yield_level() {
  vip_node_value "$1" "$VIP_YIELD_LEVELS"
}

# vip_node_value NODE LIST: NODE's value in LIST ("name=value ...").
vip_node_value() {
  local entry
  for entry in $2; do
    if [ "${entry%%=*}" = "$1" ]; then
      echo "${entry#*=}"
      return 0
    fi
  done
  echo "${1} is not one of the VIP's nodes (${2})" >&2
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

# vip_lock: this run holds the node's VIP lock (VIP_LOCK_FILE) until vip_unlock or its exit (a run
# killed holds nothing: the lock is the open file). The drains of a node's gateway apply and of its
# Loki apply, which run side by side, take turns: a reload's diversion (new connections to the
# twin) that went on beside a handover's drop took new connections after the drop, and moved with
# the VIP into its handover. Held from before a drain's first rule until its table is gone, and
# while a run removes what an earlier one left. Taken again in the same run (a reload that hands
# the VIP over first), it is counted: the outer vip_unlock releases it.
vip_lock() {
  local waited
  if [ -n "${VIP_LOCK_FD:-}" ]; then
    VIP_LOCK_DEPTH=$((VIP_LOCK_DEPTH + 1))
    return 0
  fi
  exec {VIP_LOCK_FD}>>"$VIP_LOCK_FILE"
  if flock -n "$VIP_LOCK_FD"; then
    VIP_LOCK_DEPTH=1
    return 0
  fi
  echo "${VIP_SELF}: another step's drain of the VIP is under way here; this one waits for it" \
    "(at most ${VIP_DRAIN_EXPIRY_S}s)"
  waited=$EPOCHREALTIME
  if ! flock -w "$VIP_DRAIN_EXPIRY_S" "$VIP_LOCK_FD"; then
    exec {VIP_LOCK_FD}>&-
    VIP_LOCK_FD=""
    echo "${VIP_SELF}: another step held ${VIP_LOCK_FILE} for more than ${VIP_DRAIN_EXPIRY_S}s; nothing was" \
      "drained here" >&2
    return 1
  fi
  VIP_LOCK_DEPTH=1
  echo "${VIP_SELF}: the other drain ended after $(seconds_since "$waited") s"
}

# vip_unlock: the VIP lock goes, at the outermost vip_unlock (if this run holds it).
vip_unlock() {
  [ -n "${VIP_LOCK_FD:-}" ] || return 0
  VIP_LOCK_DEPTH=$((VIP_LOCK_DEPTH - 1))
  if [ "$VIP_LOCK_DEPTH" -le 0 ]; then
    exec {VIP_LOCK_FD}>&-
    VIP_LOCK_FD=""
  fi
}

# vip_divert_new_connections TABLE: new connections to the VIP on this node go to the gateway's twin on
# VIP_DRAIN_PORT, which answers one request per connection and closes it (Connection: close), so that
# no client waits while the kept-alive connections on the VIP's port end by themselves (the gateway
# closes each after its first answer once it is VIP_KEEPALIVE_TIME_S old). Only a pure SYN is
# diverted; every packet of a connection opened before passes as it is. Only while the VIP is on
# this node: once it has moved, a client that still sends here (its ARP entry not updated yet) must
# not be diverted to a twin its next packets no longer reach; its SYN goes unanswered and is sent
# again, to the new holder. The address leaves the set by itself after VIP_DRAIN_EXPIRY_S, so
# that a step killed mid-drain cannot leave it diverted.
vip_divert_new_connections() {
  vip_drain_rules "$1" diverting
}

# vip_drop_new_connections TABLE: new connections to the VIP on this node are dropped, so that their
# client's TCP sends the SYN again (about a second later, when the VIP is elsewhere). Only a pure
# SYN matches: every packet of a connection opened before, a kept-alive one included, passes
# (a "ct state new" rule would not do: connection tracking, on only while a drain's table is there,
# takes packets of connections it never saw open for new ones). Connections diverted before keep
# their translation (vip_drain_rules).
vip_drop_new_connections() {
  vip_drain_rules "$1" dropping
}

# vip_drain_rules TABLE [diverting|dropping]: a drain's table, set in one transaction: the VIP goes
# into the named set (with its expiry), out of the other; with neither, new connections pass again.
# The rules themselves stay as long as the table: the divert rule (a redirect) is what keeps
# connection tracking, and with it the translation of the connections it diverted, on in the
# namespace; without it their answers would leave from the twin's port and their clients would
# never get them. So the table goes only once nothing diverted is open (vip_accept_new_connections).
vip_drain_rules() {
  local element=""
  [ -z "${2:-}" ] || element="add element inet $1 $2 { ${VIP_ADDRESS} timeout ${VIP_DRAIN_EXPIRY_S}s }"
  nft -f - <<EOF
table inet $1 {
    set diverting {
        type ipv4_addr
        flags timeout
    }
    set dropping {
        type ipv4_addr
        flags timeout
    }
    chain divert {
        type nat hook prerouting priority dstnat; policy accept;
    }
    chain input {
        type filter hook input priority filter - 10; policy accept;
    }
}
flush chain inet $1 divert
flush chain inet $1 input
add rule inet $1 divert ip daddr @diverting fib daddr type local tcp dport ${VIP_PORT} tcp flags & (fin | syn | rst | ack) == syn redirect to :${VIP_DRAIN_PORT}
add rule inet $1 input ip daddr @dropping tcp dport ${VIP_PORT} tcp flags & (fin | syn | rst | ack) == syn drop
flush set inet $1 diverting
flush set inet $1 dropping
$element
EOF
}

# vip_twin_listens: whether the gateway's twin (VIP_DRAIN_PORT) takes connections, in the process
# that holds the VIP's port: not with the gateway config of an earlier version, nor while an earlier
# version's Loki holds the port.
vip_twin_listens() {
  local twin
  twin=$(vip_port_listeners "$VIP_DRAIN_PORT")
  [ -n "$twin" ] && [ "$twin" = "$(vip_port_listeners "$VIP_PORT")" ]
}

# vip_connections FILTER...: how many TCP connections that match ss's FILTER are open, or closing
# with data of ours their client may not have yet: all but the listening ones and those whose FIN
# the client has acknowledged (fin-wait-2, time-wait). A server that answers and closes at once
# (Connection: close) leaves established for fin-wait-1 before its client acknowledged the answer;
# lost on the way, the answer is sent again, and only reaches the client while the VIP is still
# here and a diverted connection's translation still in place.
vip_connections() {
  ss -Htn state connected exclude fin-wait-2 exclude time-wait "$@" | wc -l
}

# vip_diverted_connections: connections the drain diverted to the gateway's twin, still open.
vip_diverted_connections() {
  vip_connections "sport = :${VIP_DRAIN_PORT}"
}

# vip_end_kept_alive: once new connections are diverted, every kept-alive connection to the VIP's
# port ends by itself within VIP_KEEPALIVE_WAIT_S if its client sends at least that often (the
# gateway answers its next request with Connection: close once it is VIP_KEEPALIVE_TIME_S old).
# What is left has sent nothing for several seconds: it is cut, idle.
vip_end_kept_alive() {
  local deadline=$((SECONDS + VIP_KEEPALIVE_WAIT_S + 1))
  while [ "$(vip_open_connections)" -gt 0 ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  vip_cut_answered 999999999
}

# vip_accept_new_connections TABLE: a drain's rules go. Nothing more is diverted or dropped at
# once; the table itself goes once the connections it diverted are done (bounded), since they
# keep their translation only as long as it is there.
vip_accept_new_connections() {
  local table=$1 deadline=$((SECONDS + VIP_DRAIN_TIMEOUT_S))
  if nft list table inet "$table" >/dev/null 2>&1; then
    vip_drain_rules "$table"
    while [ "$(vip_diverted_connections)" -gt 0 ] && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.1
    done
    nft delete table inet "$table"
  fi
}

# vip_recover TABLE: a drain an earlier run left (it was killed mid-handover) goes. A maintenance
# mark stays until Loki is ready again: vip_rejoin clears it.
vip_recover() {
  if nft list table inet "$1" >/dev/null 2>&1; then
    vip_lock  # the table may be the drain of a step beside this one: it waits for that to end
    if nft list table inet "$1" >/dev/null 2>&1; then
      vip_accept_new_connections "$1"
      echo "removed the drain rule an earlier run left on ${VIP_SELF} ($1)"
    fi
    vip_unlock
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

# vip_open_connections: connections to the VIP's port on this node (vip_connections), those still
# in their TCP handshake included: a SYN that arrived just before the drop rule is answered here,
# and its client's request would be cut if the VIP moved before it finished.
vip_open_connections() {
  vip_connections src "${VIP_ADDRESS}:${VIP_PORT}"
}

# vip_leave: hands the VIP over if this node holds it, without cutting a request or a kept-alive
# connection in use. While new connections go to the gateway's twin (one request each), the
# kept-alive ones end by themselves; then new connections wait (their SYN is sent again, about a
# second later, when the VIP is elsewhere) while the last requests finish, and the VIP moves.
# Where the twin does not listen (an earlier version's gateway config or Loki on the VIP's port), new
# connections wait from the start and kept-alive connections are cut right after an answer.
vip_leave() {
  local t0 deadline holder open
  if ! vip_managed; then
    echo "no VIP to hand over on ${VIP_SELF} (a single node, or keepalived is not running)"
    return 0
  fi
  # Released once the VIP is elsewhere and the drain's table is gone (or at the step's exit).
  vip_lock || return 1
  if ! vip_here; then
    vip_unlock
    vip_mark 1
    echo "${VIP_SELF} does not hold the VIP; it takes none while Loki restarts"
    return 0
  fi
  # Before anything is drained: another node must be able to take the VIP.
  if [ -z "$(vip_ready_peers)" ]; then
    vip_unlock
    echo "no other node is ready to take the VIP ${VIP_ADDRESS} from ${VIP_SELF}; nothing was drained and" \
      "its Loki was not restarted" >&2
    return 1
  fi
  t0=$EPOCHREALTIME
  # The caller removes the rules on every exit (vip_accept_new_connections).
  if vip_twin_listens; then
    vip_divert_new_connections "$VIP_DRAIN_TABLE"
    echo "draining the VIP on ${VIP_SELF}: new connections go to the gateway's twin on :${VIP_DRAIN_PORT}," \
      "kept-alive ones end by themselves"
    vip_end_kept_alive
    vip_drop_new_connections "$VIP_DRAIN_TABLE"
  else
    vip_drop_new_connections "$VIP_DRAIN_TABLE"
    echo "draining the VIP on ${VIP_SELF}: new connections wait, kept-alive ones are cut right after an answer"
    vip_cut_idle_connections
  fi
  deadline=$((SECONDS + VIP_DRAIN_TIMEOUT_S))
  while open=$(($(vip_open_connections) + $(vip_diverted_connections))) && [ "$open" -gt 0 ]; do
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
      vip_accept_new_connections "$VIP_DRAIN_TABLE"
      vip_unlock
      echo "no other ready node took the VIP ${VIP_ADDRESS} from ${VIP_SELF} within ${VIP_HANDOVER_TIMEOUT_S}s" \
        "(is Loki ready on the other nodes, is keepalived running there?); ${VIP_SELF} keeps it and its Loki" \
        "was not restarted" >&2
      return 1
    fi
    sleep 0.1
  done
  vip_accept_new_connections "$VIP_DRAIN_TABLE"
  vip_unlock
  echo "VIP handed over from ${VIP_SELF} to ${holder} in $(seconds_since "$t0") s"
}

# vip_cut_idle_connections: each connection to the VIP's port is cut (ss -K) right after it was
# answered (within VIP_ANSWERED_MS): a client that sends every second or so learns of it long before
# it sends again, as of a connection the server closed while idle, and dials again. What sends
# nothing for VIP_DRAIN_TIMEOUT_S is cut then, idle. For a server that cannot be told to close its
# kept-alive connections (an earlier version's Loki or gateway config).
vip_cut_idle_connections() {
  local deadline=$((SECONDS + VIP_DRAIN_TIMEOUT_S))
  while [ "$(vip_open_connections)" -gt 0 ] && [ "$SECONDS" -lt "$deadline" ]; do
    vip_cut_answered "$VIP_ANSWERED_MS"
    sleep 0.02
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    vip_cut_answered 999999999
  fi
}

# vip_cut_answered MS: cuts each connection to the VIP's port that is idle (nothing queued either
# way, data last sent after data last received) and was last answered less than MS ago.
vip_cut_answered() {
  local peer
  for peer in $(ss -Htni state established src "${VIP_ADDRESS}:${VIP_PORT}" | awk -v within="$1" '
    /^[0-9]/ { queued = $1 + $2; peer = $4; next }
    {
      sent = ""; received = ""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^lastsnd:/) sent = substr($i, 9)
        if ($i ~ /^lastrcv:/) received = substr($i, 9)
      }
      if (queued == 0 && sent != "" && received != "" && sent + 0 <= received + 0 && sent + 0 < within) print peer
    }'); do
    ss -Htn -K state established src "${VIP_ADDRESS}:${VIP_PORT}" dst "$peer" >/dev/null || true
    echo "cut the idle connection of ${peer} to the VIP on ${VIP_SELF}"
  done
}

# vip_reload_gateway UNIT: nginx reloads (a new config, renewed certificates) without losing a
# request on a kept-alive connection to the VIP. A reload closes every kept-alive connection that
# is idle at that moment, and a client that sends on one just then loses its request. So from
# before the reload until nginx's earlier workers have let go of the port, new connections to the
# VIP on this node go to the gateway's twin (one request each), or wait where the loaded config has
# no twin (their SYN is sent again about a second later): also on a node that does not hold the
# VIP, which may take it during the reload (a handover of another node, beside this step). On the
# holder the kept-alive connections end by themselves first (vip_end_kept_alive), so nginx
# reloads with none left. The VIP does not move; where the holder's loaded config has no twin (the
# first reload after an upgrade), the VIP is handed over first. Without a VIP nginx just reloads.
vip_reload_gateway() {
  local unit=$1 listeners
  if ! vip_managed; then
    systemctl reload "$unit"
    return 0
  fi
  # A handover of this node under way (its Loki's apply, beside this step) ends first: once the VIP
  # is elsewhere nginx reloads with no connection to it. And no handover begins before the reload
  # and its diversion have ended.
  vip_lock || return 1
  if vip_here && ! vip_twin_listens && ss -Hltnp "sport = :${VIP_PORT}" | grep -qF '"nginx"' \
    && [ -n "$(vip_ready_peers)" ]; then
    # The config nginx runs is an earlier version's, without the twin: its kept-alive connections
    # cannot end by themselves. The VIP is handed over first (vip_leave cuts each right after an
    # answer), nginx reloads with no connection to it, and the node takes part again.
    echo "the gateway on ${VIP_SELF}, which holds the VIP, runs a config without the twin: the VIP is" \
      "handed over before nginx reloads"
    VIP_GATEWAY_HANDOVER=1  # vip_gateway_exit removes the handover's drain too
    if vip_leave; then
      systemctl reload "$unit"  # in FAULT: the VIP cannot come back during the reload
      vip_rejoin
      vip_unlock
      return 0
    fi
  fi
  if vip_twin_listens; then
    vip_divert_new_connections "$VIP_RELOAD_TABLE"
    if vip_here; then
      echo "reloading the gateway on ${VIP_SELF}, which holds the VIP: new connections go to its twin on" \
        ":${VIP_DRAIN_PORT} while the kept-alive ones end"
      vip_end_kept_alive
    fi
  else
    vip_drop_new_connections "$VIP_RELOAD_TABLE"
    if vip_here; then
      echo "reloading the gateway on ${VIP_SELF}, which holds the VIP, without its twin: new connections wait" \
        "while each kept-alive one is cut right after an answer"
      vip_cut_idle_connections
    fi
  fi
  listeners=$(vip_port_listeners "$VIP_PORT")
  systemctl reload "$unit"
  vip_reloaded "$listeners"
  vip_accept_new_connections "$VIP_RELOAD_TABLE"
  vip_unlock
}

# vip_port_listeners PORT: the pids of the processes listening on PORT, one per line (nginx: its
# master and workers).
vip_port_listeners() {
  ss -Hltnp "sport = :$1" | grep -o 'pid=[0-9]*' | sort -u
}

# vip_reloaded PIDS: waits (at most 5 s) until, of PIDS (the listeners before a reload), no more
# than one (nginx's master) still listens: the earlier workers have let go of the port and closed
# their idle connections; whatever connects from then on reaches a worker of the new config.
vip_reloaded() {
  local deadline=$((SECONDS + 5))
  while [ "$(comm -12 <(printf '%s\n' "$1") <(vip_port_listeners "$VIP_PORT") | grep -c .)" -gt 1 ] \
    && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.05
  done
}

# vip_gateway_exit: the EXIT trap of the gateway's apply: no drain it started outlives it.
vip_gateway_exit() {
  vip_accept_new_connections "$VIP_RELOAD_TABLE"
  if [ "${VIP_GATEWAY_HANDOVER:-0}" = 1 ]; then
    vip_accept_new_connections "$VIP_DRAIN_TABLE"
  fi
}

# vip_rejoin: once Loki is ready, the node leaves FAULT. Where it outranks the holder it yields
# first: its priority goes to its yield level (VIP_YIELD_LEVELS), below every configured priority,
# a full step from every other node's level (components/vrrp_priorities.py): at a handover the
# best backup's timer runs out 39 ms before the next one's. At equal priorities, and then at one
# point apart (3.9 ms), two backups both took the VIP at a handover and one gave it up again: a
# move with no drain, seen in rehearsals' rolls.
vip_rejoin() {
  local holder own theirs level yield=0 deadline
  if ! vip_managed; then
    return 0
  fi
  holder=$(vip_holder)
  if [ "$VIP_PREEMPT" = 1 ] && [ -n "$holder" ] && [ "$holder" != "$VIP_SELF" ]; then
    own=$(vip_priority "$VIP_SELF")
    theirs=$(vip_priority "$holder" 2>/dev/null) || theirs=""
    if [ -n "$theirs" ] && [ "$own" -ge "$theirs" ]; then
      if ! level=$(vip_yield_level "$VIP_SELF"); then
        echo "${VIP_SELF} outranks the holder ${holder} but has no yield level (VIP_YIELD_LEVELS); it stays" \
          "out of VRRP rather than take the VIP back" >&2
        return 1
      fi
      yield=$((level - own))
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
