#!/usr/bin/env bash
# The client certificates a Loki node's gateway takes (runs as root, on stdin; loki-stack sets the
# parameters above this script; components/gateway_certificates.py says why). MODE=admit: the
# list becomes the staged serials and those it held (a serial the staged list revokes stays
# revoked: the staged line comes first); MODE=settle: the staged list alone. nginx reloads (a
# kept-alive connection to the VIP loses nothing: vip_reload_gateway) only where its gateway
# config includes the list; `nginx -t` first, and the list as it was if nginx rejects it. Safe to
# run again after a failure at any line.
set -euo pipefail
: "${MODE:?}" "${STAGED:?}" "${LIST_FILE:?}" "${GATEWAY_CONFIG:?}" "${UNIT:?}" "${VIP_RELOAD_TABLE:?}"

work=$(mktemp -d)
trap 'rm -rf "$work"; vip_gateway_exit' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
vip_recover "$VIP_RELOAD_TABLE"

host=$(hostname -f 2>/dev/null || hostname)
safe_dir "$(dirname "$LIST_FILE")"
case "$MODE" in
  admit)
    # The staged list as it is, then each serial the list held that the staged one does not name
    # (where both name one, the staged line counts): a list already settled stays as it is.
    { cat "$STAGED"
      if [ -f "$LIST_FILE" ]; then
        awk -F '"' 'NR == FNR { if ($0 ~ /^"/) staged[$2] = 1; next } /^"/ && !($2 in staged)' "$STAGED" "$LIST_FILE"
      fi; } >"${work}/list"
    ;;
  settle) cp "$STAGED" "${work}/list" ;;
  *) echo "MODE must be admit or settle, not ${MODE}" >&2; exit 2 ;;
esac

# What nginx last loaded through this step: a run killed after placing the list and before the
# reload leaves them apart, and the next run reloads although the list is already in place.
loaded="${LIST_FILE%.map}.loaded"
changed=0
if [ -f "$LIST_FILE" ]; then cp -p "$LIST_FILE" "${work}/before"; fi
place "${work}/list" "$LIST_FILE" 0644 root root
taken=$(grep -c '^"[0-9A-F]*" 1;' "$LIST_FILE" || true)
if [ "$changed" -eq 0 ] && cmp -s "$LIST_FILE" "$loaded"; then
  echo "gateway certificates on ${host} (${MODE}): ${taken} taken, unchanged"
  exit 0
fi
if ! systemctl is-active --quiet "$UNIT" || ! grep -qF "$LIST_FILE" "$GATEWAY_CONFIG" 2>/dev/null; then
  echo "gateway certificates on ${host} (${MODE}): ${taken} taken; the gateway reads them when it is in place"
  exit 0
fi
if ! nginx -q -t; then
  echo "nginx -t rejected the gateway with the new certificate list on ${host}; the list is as it was" >&2
  if [ -f "${work}/before" ]; then place "${work}/before" "$LIST_FILE" 0644 root root; else rm -f "$LIST_FILE"; fi
  exit 1
fi
vip_reload_gateway "$UNIT"
cp "$LIST_FILE" "${loaded}.new"
mv -f "${loaded}.new" "$loaded"
echo "gateway certificates on ${host} (${MODE}): ${taken} taken, nginx reloaded"
