#!/usr/bin/env bash
# Replaces a new VM's bootstrap SSH host key with its own (runs as root, on stdin, over the SSH
# connection that pins the bootstrap key; loki-stack sets the parameters above this script).
#
# The bootstrap key reached the VM inside its cloud-init snippet, a file on the Proxmox node that
# the provider cannot upload with a file mode (only root@pam may set one). Once this step ran, that
# key is worth nothing: the VM serves HOST_PUBLIC_KEY, which every later SSH step pins, and whose
# private half only ever travelled inside this SSH session. First, cloud-init is told to trust its
# cache from now on (manual_cache_clean): Proxmox derives the instance-id from the snippet's
# content, so a changed snippet would otherwise make cloud-init treat the VM as new at its next
# boot and put the bootstrap key back. Idempotent: a second run changes nothing.
set -euo pipefail
: "${HOST_PRIVATE_KEY:?}" "${HOST_PUBLIC_KEY:?}" "${KEY_FILE:?}" "${CLOUD_CFG:?}" "${SSH_UNIT:?}"

host=$(hostname -f 2>/dev/null || hostname)
umask 077
cfg_line="manual_cache_clean: true"
if [ "$(cat "$CLOUD_CFG" 2>/dev/null || true)" != "$cfg_line" ]; then
  install -d -m 0755 "$(dirname "$CLOUD_CFG")"
  printf '%s\n' "$cfg_line" >"${CLOUD_CFG}.tmp"
  chmod 0644 "${CLOUD_CFG}.tmp"
  mv -f "${CLOUD_CFG}.tmp" "$CLOUD_CFG"
fi

want=$(printf '%s\n' "$HOST_PUBLIC_KEY" | awk '{print $1, $2}')
if [ -f "$KEY_FILE" ] && [ "$(ssh-keygen -y -f "$KEY_FILE" | awk '{print $1, $2}')" = "$want" ]; then
  echo "SSH host key on ${host} unchanged"
  exit 0
fi
work=$(mktemp -d "$(dirname "$KEY_FILE")/.lokistack-host-key.XXXXXX")
trap 'rm -rf "$work"' EXIT
printf '%s\n' "$HOST_PRIVATE_KEY" >"${work}/key"
if [ "$(ssh-keygen -y -f "${work}/key" | awk '{print $1, $2}')" != "$want" ]; then
  echo "the host key given for ${host} does not match its public key; nothing changed" >&2
  exit 1
fi
printf '%s\n' "$want" >"${work}/key.pub"
chmod 0600 "${work}/key"
chmod 0644 "${work}/key.pub"
mv -f "${work}/key.pub" "${KEY_FILE}.pub"
mv -f "${work}/key" "$KEY_FILE"
sshd -t
# sshd reads its host keys when it starts or reloads; this session keeps its own process.
systemctl reload "$SSH_UNIT"
echo "SSH host key on ${host} replaced"
