#!/usr/bin/env bash
# Prepares a Loki node (runs as root, on stdin; loki-stack sets the parameters above this
# script): the data disk at the data directory, Grafana's package repository (its signing key
# checked against a pinned fingerprint), and the pinned Loki package, held. Service starts are
# blocked during the install: Loki is (re)started by the rolling apply step, one node at a time.
set -euo pipefail
: "${DATA_DEVICE:?}" "${DATA_DIR:?}" "${LOKI_VERSION:?}" "${STAGE_DIR:?}" "${DROPIN_FILE:?}"
: "${REPO_URL:?}" "${KEY_URL:?}" "${KEY_FINGERPRINT:?}"

export DEBIAN_FRONTEND=noninteractive
grafana_repository "$REPO_URL" "$KEY_URL" "$KEY_FINGERPRINT"
prepare_data_disk "$DATA_DEVICE" "$DATA_DIR" loki
install_pinned loki "$LOKI_VERSION"
if [ ! -f "$DROPIN_FILE" ]; then
  # First install: the package's default config must not run; the apply step starts ours.
  systemctl stop loki.service 2>/dev/null || true
fi
chown loki:loki "$DATA_DIR"
chmod 0750 "$DATA_DIR"
install -d -m 0750 -o root -g loki /etc/loki
install -d -m 0700 -o root -g root "$STAGE_DIR"
