# Whether this Loki node may stop now without taking writes down (components/loki_ring.py says why
# and how): every other node must be ACTIVE and healthy in this node's view of the ingester ring
# (Loki reports a node whose heartbeat is too old as UNHEALTHY), ready at its gateway, and see
# every node but this one ACTIVE in its own view: the nodes left must write to each other (Loki's
# readiness says only that a node's own view was whole, once).
# Parameters: RING_* (set by loki-stack); the caller's CA_FILE, CERT_FILE and KEY_FILE (the node's
# certificate: Loki's loopback listener and every peer's gateway, /ready and /ring, accept it).

# ring_view_problems WHERE: prints one line per node but RING_SELF that is not ACTIVE in the ring
# whose JSON is in RING_JSON (WHERE names that view in the message).
ring_view_problems() {
  # shellcheck disable=SC2086  # RING_NODES is a list of name=address words
  python3 - "$RING_SELF" "$1" $RING_NODES <<'PY'
import json
import os
import sys

self_name, where, nodes = sys.argv[1], sys.argv[2], dict(n.split("=", 1) for n in sys.argv[3:])
try:
    shards = json.loads(os.environ["RING_JSON"])["shards"] or []
except (ValueError, KeyError, TypeError) as error:
    print(f"cannot read {where}: {error}")
    sys.exit(0)
by_address = {str(s.get("address", "")).rsplit(":", 1)[0]: s for s in shards}
for name, address in nodes.items():
    if name == self_name:
        continue
    shard = by_address.get(address)
    if shard is None:
        print(f"{name} ({address}) is not in {where}")
    elif shard.get("state") != "ACTIVE":
        print(f"{name} ({address}) is {shard.get('state')} in {where}, not ACTIVE")
PY
}

# ring_get URL: a ring page as JSON, with the node's certificate (curl's error on stderr if it fails).
ring_get() {
  curl -fsS --max-time 5 -H 'Accept: application/json' --cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE" \
    "$1"
}

# ring_problems: prints one line per reason this node may not stop now (nothing when it may).
ring_problems() {
  local ring="" entry name address status url failed=""
  # The first of RING_URLS that answers: Loki's own port, or the gateway's port where the Loki of a
  # version before the gateway runs until this upgrade restarts it.
  for url in $RING_URLS; do
    if ring=$(ring_get "$url" 2>&1); then
      failed=""
      break
    fi
    failed="${failed}${failed:+; }${url}: ${ring}"
  done
  if [ -n "$failed" ]; then
    echo "${RING_SELF} cannot read its ingester ring (${failed})"
    return 0
  fi
  RING_JSON=$ring ring_view_problems "the ingester ring"
  for entry in $RING_NODES; do
    name=${entry%%=*}
    address=${entry#*=}
    [ "$name" = "$RING_SELF" ] && continue
    status=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' --cacert "$CA_FILE" --cert "$CERT_FILE" \
      --key "$KEY_FILE" "https://${address}:${RING_PEER_PORT}/ready" 2>/dev/null || true)
    if [ "$status" != 200 ]; then
      echo "${name} (${address}) is not ready (/ready on port ${RING_PEER_PORT}: ${status:-no answer})"
      continue
    fi
    # Its own view, through its gateway (the server role's grant; never passed on to another node).
    url="https://${address}:${RING_PEER_PORT}/ring"
    if ! ring=$(ring_get "$url" 2>&1); then
      echo "cannot read ${name}'s view of the ingester ring (${url}: ${ring})"
      continue
    fi
    RING_JSON=$ring ring_view_problems "${name}'s view of the ingester ring"
  done
}

# ring_wait_safe_to_stop: returns once this node may stop; fails after RING_WAIT_S seconds naming
# what is not healthy.
ring_wait_safe_to_stop() {
  local deadline problems t0=$EPOCHREALTIME
  deadline=$((SECONDS + RING_WAIT_S + 1))
  while :; do
    problems=$(ring_problems)
    if [ -z "$problems" ]; then
      echo "every other Loki node is ACTIVE in the ring, ready, and sees the others ACTIVE: ${RING_SELF} may stop" \
        "(checked in $(seconds_since "$t0") s)"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "${RING_SELF} must not stop: with it the cluster would lose its write quorum, and after" \
        "${RING_WAIT_S}s:" >&2
      echo "  - ${problems//$'\n'/$'\n'  - }" >&2
      return 1
    fi
    sleep 2
  done
}
