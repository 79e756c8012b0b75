# Whether the gateway (nginx) itself serves its port (components/loki_gateway.py): every answer of
# the gateway names its node in a header; a process that only holds the port does not. An earlier
# version of the stack ran Loki itself on that port: nginx, reloaded while that Loki still held it,
# cannot bind, keeps running without it, and the reload exits 0 (`nginx -t` passes too).
# Parameters: GATEWAY_URL, GATEWAY_PORT, GATEWAY_NODE_HEADER (set by loki-stack).

# gateway_serves CURL_ARGS...: the gateway answers on GATEWAY_URL (any status).
gateway_serves() {
  local headers
  headers=$(curl -sS --max-time 5 -o /dev/null -D - "$@" "$GATEWAY_URL" 2>/dev/null | tr -d '\r') || true
  grep -qi "^${GATEWAY_NODE_HEADER}:" <<<"$headers"
}

# gateway_port_holders: the names of the processes listening on GATEWAY_PORT, one per line.
gateway_port_holders() {
  ss -Hltnp "sport = :${GATEWAY_PORT}" | grep -o '(("[^"]*"' | tr -d '("' | sort -u
}

# gateway_take_port UNIT: nginx (UNIT) reloaded, and then holding the gateway's port within 11 s (a
# reload that cannot bind retries for 2.5 s; whatever config it loads, the gateway's own step
# reloads it with its own); fails naming what holds the port.
gateway_take_port() {
  local deadline
  systemctl reload "$1"
  deadline=$((SECONDS + 11))
  until gateway_port_holders | grep -qx nginx; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "the gateway on $(hostname) does not serve port ${GATEWAY_PORT} after a reload; it is held by:" \
        "$(gateway_port_holders | tr '\n' ' ')" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "the gateway on $(hostname) serves port ${GATEWAY_PORT} again (nginx reloaded)"
}
