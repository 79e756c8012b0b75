# wait_https_status URL TIMEOUT_S UNIT ACCEPTED REFUSED [CURL_ARGS...]
# Returns once URL answers over HTTPS (with CURL_ARGS such as --cacert/--cert/--key) with a status
# in ACCEPTED (space-separated, e.g. "200 502"); fails at once on a status in REFUSED, and after
# TIMEOUT_S seconds with UNIT's status. Anything else (no answer yet, another status) waits.
wait_https_status() {
  local url=$1 timeout=$2 unit=$3 accepted=" $4 " refused=" $5 " deadline status host
  shift 5
  host=$(hostname -f 2>/dev/null || hostname)
  # SECONDS counts whole seconds from the shell's start, which falls inside a second: one more
  # makes the wait last at least TIMEOUT_S (a clean-clone CI run gave up after 2.05 s of 3).
  deadline=$((SECONDS + timeout + 1))
  while :; do
    status=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$@" "$url" 2>/dev/null || true)
    if [ -n "$status" ] && [[ "$accepted" == *" ${status} "* ]]; then
      echo "${url} answers ${status}"
      return 0
    fi
    if [ -n "$status" ] && [[ "$refused" == *" ${status} "* ]]; then
      echo "${url} on ${host} answered ${status}" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "${url} on ${host} is not ready after ${timeout}s (last answer: ${status:-none})" >&2
      systemctl status --no-pager "$unit" >&2 || true
      return 1
    fi
    sleep 2
  done
}

# wait_https_ready URL TIMEOUT_S UNIT [CURL_ARGS...]: until URL answers 200.
wait_https_ready() {
  local url=$1 timeout=$2 unit=$3
  shift 3
  wait_https_status "$url" "$timeout" "$unit" 200 "" "$@"
}
