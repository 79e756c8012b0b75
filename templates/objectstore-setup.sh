#!/usr/bin/env bash
# Prepares the object store host (runs as root, on stdin; loki-stack sets the parameters above
# this script): the data disk, the service user and directories, and the server binary from a
# pinned, checksum-verified release archive. Every step checks before it acts, so a re-run
# changes nothing; a disk that holds a filesystem or a partition table is never formatted.
set -euo pipefail
: "${DATA_DEVICE:?}" "${DATA_DIR:?}" "${SERVICE_USER:?}" "${CONFIG_DIR:?}" "${CERTS_DIR:?}"
: "${PACKAGE_URL:?}" "${PACKAGE_SHA256:?}" "${BINARY:?}" "${UNIT:?}"

export DEBIAN_FRONTEND=noninteractive
ensure_packages curl
prepare_data_disk "$DATA_DEVICE" "$DATA_DIR" objectstore

# The service user and its directories.
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  useradd --system --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "${DATA_DIR}/data"
install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
install -d -m 0750 -o root -g "$SERVICE_USER" "$CERTS_DIR" "${CERTS_DIR}/CAs"  # read by the server, written by root

# The server binary: one directory per verified archive, the binary path a link to it.
release_dir="/opt/lokistack/objectstore/${PACKAGE_SHA256}"
if [ ! -x "${release_dir}/server" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  curl --proto '=https' --tlsv1.2 -fsSL --retry 3 --retry-delay 2 -o "${work}/release.tar.gz" "$PACKAGE_URL"
  if ! echo "${PACKAGE_SHA256}  ${work}/release.tar.gz" | sha256sum --check --quiet -; then
    echo "${PACKAGE_URL} does not match its pinned SHA-256 ${PACKAGE_SHA256}; not installing it" >&2
    exit 1
  fi
  tar -xzf "${work}/release.tar.gz" -C "$work"
  server=$(find "$work" -type f \( -name silo -o -name minio \) | head -n 1)
  if [ -z "$server" ]; then
    echo "no silo or minio binary in ${PACKAGE_URL}" >&2
    exit 1
  fi
  install -d -m 0755 "$release_dir"
  install -m 0755 "$server" "${release_dir}/server"
fi
if [ "$(readlink "$BINARY" || true)" != "${release_dir}/server" ]; then
  ln -sfn "${release_dir}/server" "$BINARY"
  echo "server binary: ${PACKAGE_URL}"
  if systemctl is-active --quiet "$UNIT"; then
    systemctl restart "$UNIT"
  fi
fi
