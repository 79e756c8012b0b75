#!/usr/bin/env bash
# Prepares a Loki node (runs as root, on stdin; loki-stack sets the parameters above this
# script): Grafana's package repository (trusting only the pinned keys), the data disk at the data
# directory, the loki user in its own group, and the pinned Loki package, held.
#
# Grafana's loki package makes its user without a group (adduser --system: nogroup on Debian 12)
# and restarts loki.service from its post-install script, with its example config, whatever
# policy-rc.d says. So the user and group are made first, and a unit condition keeps Loki from
# starting until the apply step has put the stack's config in place.
set -euo pipefail
: "${DATA_DEVICE:?}" "${DATA_DIR:?}" "${LOKI_VERSION:?}" "${STAGE_DIR:?}" "${GUARD_FILE:?}" "${GUARD:?}"
: "${REPO_URL:?}" "${KEY_URL:?}" "${KEY_FINGERPRINTS:?}"
: "${DISK_PATH_UNIT:?}" "${DISK_PATH_CONTENT:?}" "${DISK_STARTER_UNIT:?}" "${DISK_STARTER_CONTENT:?}"

export DEBIAN_FRONTEND=noninteractive
grafana_repository "$REPO_URL" "$KEY_URL" "$KEY_FINGERPRINTS"
prepare_data_disk "$DATA_DEVICE" "$DATA_DIR" loki
system_user loki "$DATA_DIR"
ensure_packages nftables python3-yaml  # the firewall (components/firewall.py); the limits check (loki-limits-apply.sh)
# write_whole FILE CONTENT: FILE holds CONTENT, replaced in one rename (never half written).
write_whole() {
  printf '%s' "$2" >"${1}.new"
  mv -f "${1}.new" "$1"
}
install -d -m 0755 "$(dirname "$GUARD_FILE")"
write_whole "$GUARD_FILE" "$GUARD"
# Loki starts by itself once its data disk is there, also when it was missing at boot
# (components/disk_arrival.py); watching from the next boot on.
write_whole "/etc/systemd/system/${DISK_STARTER_UNIT}" "$DISK_STARTER_CONTENT"
write_whole "/etc/systemd/system/${DISK_PATH_UNIT}" "$DISK_PATH_CONTENT"
systemctl daemon-reload
systemctl enable --quiet "$DISK_PATH_UNIT"
install_pinned loki "$LOKI_VERSION"
chown loki:loki "$DATA_DIR"
chmod 0750 "$DATA_DIR"
install -d -m 0750 -o root -g loki /etc/loki
install -d -m 0700 -o root -g root "$STAGE_DIR"
