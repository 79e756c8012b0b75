#!/usr/bin/env bash
# Prepares a Loki node for the virtual IP (runs as root, on stdin; loki-stack sets the
# parameters above this script): keepalived and curl, the dedicated user that runs the health
# check, and the directories for its files.
set -euo pipefail
: "${SCRIPT_USER:?}" "${CHECK_DIR:?}" "${STAGE_DIR:?}"

export DEBIAN_FRONTEND=noninteractive
ensure_packages keepalived curl
if ! id -u "$SCRIPT_USER" >/dev/null 2>&1; then
  useradd --system --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$SCRIPT_USER"
fi
install -d -m 0755 -o root -g root /etc/keepalived
install -d -m 0750 -o root -g "$SCRIPT_USER" "$CHECK_DIR"
install -d -m 0700 -o root -g root "$STAGE_DIR"
