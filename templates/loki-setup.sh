#!/usr/bin/env bash
# Prepares a Loki node (runs as root, on stdin; loki-stack sets the parameters above this
# script): the data disk at the data directory, Grafana's package repository (its signing key
# checked against a pinned fingerprint), and the pinned Loki package, held. Service starts are
# blocked during the install: Loki is (re)started by the rolling apply step, one node at a time.
set -euo pipefail
: "${DATA_DEVICE:?}" "${DATA_DIR:?}" "${LOKI_VERSION:?}" "${STAGE_DIR:?}" "${DROPIN_FILE:?}"
: "${REPO_URL:?}" "${KEY_URL:?}" "${KEY_FINGERPRINT:?}"

export DEBIAN_FRONTEND=noninteractive
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v gpg >/dev/null || missing+=(gnupg)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
prepare_data_disk "$DATA_DEVICE" "$DATA_DIR" loki

keyring=/etc/apt/keyrings/grafana.gpg
sources=/etc/apt/sources.list.d/grafana.list
if [ ! -s "$keyring" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  curl -fsSL -o "${work}/key.asc" "$KEY_URL"
  fingerprints=$(gpg --show-keys --with-colons "${work}/key.asc" | awk -F: '$1 == "fpr" {print $10}')
  if ! grep -qx "$KEY_FINGERPRINT" <<<"$fingerprints"; then
    echo "${KEY_URL} is not the key with fingerprint ${KEY_FINGERPRINT}; refusing it" >&2
    exit 1
  fi
  install -d -m 0755 /etc/apt/keyrings
  gpg --dearmor <"${work}/key.asc" >"${work}/key.gpg"
  install -m 0644 "${work}/key.gpg" "$keyring"
fi
line="deb [signed-by=${keyring}] ${REPO_URL} stable main"
if [ "$(cat "$sources" 2>/dev/null || true)" != "$line" ]; then
  echo "$line" >"$sources"
  apt-get update -q
fi

if [ "$(dpkg-query -W -f='${Version}' loki 2>/dev/null || true)" != "$LOKI_VERSION" ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  status=0
  apt-get update -q
  apt-get install -y -q --allow-change-held-packages --allow-downgrades "loki=${LOKI_VERSION}" || status=$?
  rm -f /usr/sbin/policy-rc.d
  [ "$status" -eq 0 ] || exit "$status"
  apt-mark hold loki >/dev/null
  echo "installed loki ${LOKI_VERSION}"
fi
if [ ! -f "$DROPIN_FILE" ]; then
  # First install: the package's default config must not run; the apply step starts ours.
  systemctl stop loki.service 2>/dev/null || true
fi
chown loki:loki "$DATA_DIR"
chmod 0750 "$DATA_DIR"
install -d -m 0750 -o root -g loki /etc/loki
install -d -m 0700 -o root -g root "$STAGE_DIR"
