#!/usr/bin/env bash
# keepalived's check that this node's gateway serves clients (run by keepalived as its script
# user every vipCheckInterval seconds; loki-stack sets the parameters above this script). It
# passes while the node's own Loki is ready, and also while the gateway answers without it (502,
# 503 or 504: Loki crashed, is restarting or starting) as long as another node's gateway answers
# /ready: nginx then sends the pushes and reads its own Loki cannot take to the other nodes. It
# fails when the gateway itself does not answer (nginx down, or a refusal: a broken config), so
# that the VIP moves after vipCheckFall checks. How long a node may keep the VIP while its own
# Loki is not ready is the other check's business (chk_loki_ready, vipLokiGraceSeconds).
set -uo pipefail
: "${LOCAL_URL:?}" "${PEER_URLS?}" "${CA_FILE:?}" "${CERT_FILE:?}" "${KEY_FILE:?}" "${TIMEOUT_S:?}"

tls=(--cacert "$CA_FILE" --cert "$CERT_FILE" --key "$KEY_FILE")
status=$(curl -s -o /dev/null -w '%{http_code}' -m "$TIMEOUT_S" "${tls[@]}" "$LOCAL_URL") || true
case "$status" in
  200) exit 0 ;;
  502 | 503 | 504) ;;
  *) exit 1 ;;
esac
peers=()
for url in $PEER_URLS; do
  peers+=(-o /dev/null "$url")
done
[ "${#peers[@]}" -gt 0 ] || exit 1
# Every peer at once, within the same time: any one ready is enough.
curl -s --parallel -m "$TIMEOUT_S" -w '%{http_code}\n' "${tls[@]}" "${peers[@]}" | grep -qx 200
