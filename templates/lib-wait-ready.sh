# wait_https_ready URL TIMEOUT_S UNIT [CURL_ARGS...]
# Returns once URL answers over HTTPS (curl -f, with CURL_ARGS such as --cacert/--cert/--key);
# after TIMEOUT_S seconds it prints UNIT's status and fails.
wait_https_ready() {
  local url=$1 timeout=$2 unit=$3 deadline
  shift 3
  deadline=$((SECONDS + timeout))
  until curl -fsS --max-time 5 "$@" -o /dev/null "$url"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "${url} on $(hostname -f 2>/dev/null || hostname) is not ready after ${timeout}s" >&2
      systemctl status --no-pager "$unit" >&2 || true
      return 1
    fi
    sleep 2
  done
  echo "${url} is ready"
}
