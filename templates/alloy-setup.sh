#!/usr/bin/env bash
# Prepares a host for its log agent (runs as root, on stdin; loki-stack sets the parameters above
# this script): Grafana's package repository (key fingerprint checked), the pinned Alloy package,
# held, and the alloy user in the groups that may read /var/log and the journal.
set -euo pipefail
: "${ALLOY_VERSION:?}" "${STAGE_DIR:?}" "${REPO_URL:?}" "${KEY_URL:?}" "${KEY_FINGERPRINTS:?}"

export DEBIAN_FRONTEND=noninteractive
grafana_repository "$REPO_URL" "$KEY_URL" "$KEY_FINGERPRINTS"
install_pinned alloy "$ALLOY_VERSION"
for group in adm systemd-journal; do
  if ! id -nG alloy | tr ' ' '\n' | grep -qx "$group"; then
    usermod -a -G "$group" alloy
  fi
done
install -d -m 0700 -o root -g root "$STAGE_DIR"
