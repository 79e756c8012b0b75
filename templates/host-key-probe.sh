#!/usr/bin/env bash
# Which of its two SSH host keys a VM presents (runs where Pulumi runs, on stdin; loki-stack sets
# the parameters above this script). Prints that key (type and base64) for the VM's first steps to
# pin; any other key, or no answer within TIMEOUT_S, fails the step and nothing connects.
#
# A VM presents BOOTSTRAP_KEY (from its cloud-init snippet) until its host-key step has installed
# OWN_KEY. This runs again whenever the VM is created anew (a VM rebuilt after it was lost; its
# NIC's MAC changes): then the VM presents the bootstrap key again, and its first steps must pin
# that one, while a VM that already has its own key (an upgrade from a version without this probe)
# must be pinned by its own. Nothing secret is sent: ssh-keyscan only reads what the host presents.
set -euo pipefail
: "${ADDRESS:?}" "${BOOTSTRAP_KEY:?}" "${OWN_KEY:?}" "${TIMEOUT_S:?}"

if ! command -v ssh-keyscan >/dev/null; then
  echo "ssh-keyscan is missing on the machine running Pulumi (Debian: apt install openssh-client)" >&2
  exit 1
fi
bootstrap=$(printf '%s\n' "$BOOTSTRAP_KEY" | awk '{print $1, $2}')
own=$(printf '%s\n' "$OWN_KEY" | awk '{print $1, $2}')
deadline=$((SECONDS + TIMEOUT_S))
while :; do
  # While the VM boots nothing answers; a key neither of ours is retried too (a VM whose cloud-init
  # has not yet written the snippet's key), and refused at the deadline.
  seen=$(ssh-keyscan -T 5 -t ed25519 "$ADDRESS" 2>/dev/null | awk '!/^#/ && NF >= 3 {print $2, $3; exit}') || seen=""
  case "$seen" in
    "$own")
      echo "${ADDRESS} presents its own SSH host key" >&2
      printf '%s\n' "$seen"
      exit 0 ;;
    "$bootstrap")
      echo "${ADDRESS} presents its bootstrap SSH host key (a new VM)" >&2
      printf '%s\n' "$seen"
      exit 0 ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    if [ -n "$seen" ]; then
      echo "${ADDRESS} presents the SSH host key '${seen}', neither its bootstrap key nor its own: not" \
        "connecting (another machine at this address, or someone in between)" >&2
    else
      echo "${ADDRESS} did not answer on SSH within ${TIMEOUT_S} s" >&2
    fi
    exit 1
  fi
  sleep 2
done
