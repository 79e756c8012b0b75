#!/usr/bin/env bash
# Prepares the Grafana host (runs as root, on stdin; loki-stack sets the parameters above this
# script): Grafana's package repository (key fingerprint checked) and the pinned Grafana OSS
# package, held; the directory for its TLS files.
set -euo pipefail
: "${GRAFANA_VERSION:?}" "${TLS_DIR:?}" "${REPO_URL:?}" "${KEY_URL:?}" "${KEY_FINGERPRINTS:?}"

export DEBIAN_FRONTEND=noninteractive
grafana_repository "$REPO_URL" "$KEY_URL" "$KEY_FINGERPRINTS"
install_pinned grafana "$GRAFANA_VERSION"
install -d -m 0750 -o root -g grafana "$TLS_DIR"  # root's: Grafana reads, never writes, its TLS files
