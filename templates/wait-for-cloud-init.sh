#!/usr/bin/env bash
# Runs on a new VM over SSH (on stdin) and returns once cloud-init has finished, so that later
# steps find the admin user, the packages and the files it set up. Exit status 0 when cloud-init
# finished (also with recoverable warnings) and the guest agent runs; 1 otherwise, with the reason.
set -euo pipefail

host=$(hostname -f 2>/dev/null || hostname)
rc=0
cloud-init status --wait >/dev/null || rc=$?
case "$rc" in
  0) echo "cloud-init finished on ${host}" ;;
  2) echo "cloud-init finished on ${host} with recoverable warnings:"
     cloud-init status --long || true ;;
  *) echo "cloud-init failed on ${host} (status ${rc}):" >&2
     cloud-init status --long >&2 || true
     exit 1 ;;
esac

if ! systemctl is-active --quiet qemu-guest-agent; then
  echo "qemu-guest-agent is not running on ${host}" >&2
  systemctl status --no-pager qemu-guest-agent >&2 || true
  exit 1
fi
