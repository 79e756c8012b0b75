#!/usr/bin/env bash
# Applies a node's staged keepalived.conf (runs as root, on stdin; loki-stack sets the
# parameters above this script): `keepalived -t` checks it first and a rejected config changes
# nothing; then it is put in place (0600: it holds the VRRP password) and keepalived reloads.
#
# keepalived that starts here beside a Loki that is not running (a new node: a first deploy, a VM
# created again, a node added) starts in FAULT (MAINTENANCE_FILE): its gateway check passes as soon
# as another node is ready (its gateway sends there), so with a priority above the holder's it would
# take the VIP by preemption, with no drain, before its own Loki ever ran. Loki's apply takes it
# back into VRRP below the holder once Loki is ready (loki-apply.sh).
set -euo pipefail
: "${STAGED:?}" "${TARGET:?}" "${UNIT:?}" "${LOKI_UNIT:?}" "${MAINTENANCE_FILE:?}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# keepalived 2.2.7 `-t` kills itself when it checks a script as an existing non-root script user
# (it compares its parent pid after dropping privileges); the daemon is not affected. So the
# check runs on a copy that differs only in script_user.
sed 's/^\([[:space:]]*script_user[[:space:]]\).*/\1root/' "$STAGED" >"${work}/keepalived.conf"
if ! keepalived -t -f "${work}/keepalived.conf"; then
  echo "keepalived -t rejected the new config on $(hostname -f 2>/dev/null || hostname); nothing changed" >&2
  exit 1
fi
if [ -f "$TARGET" ] && cmp -s "$STAGED" "$TARGET" && [ "$(stat -c '%a %U' "$TARGET")" = "600 root" ] \
  && systemctl is-active --quiet "$UNIT"; then
  echo "keepalived.conf unchanged"
  exit 0
fi
install -m 0600 -o root -g root "$STAGED" "$TARGET"
systemctl enable --quiet "$UNIT"
if systemctl is-active --quiet "$UNIT"; then
  systemctl reload "$UNIT"
else
  if ! systemctl is-active --quiet "$LOKI_UNIT"; then
    printf '1\n' >"$MAINTENANCE_FILE"
    echo "keepalived starts in FAULT on $(hostname -f 2>/dev/null || hostname): its Loki is not running"
  fi
  systemctl restart "$UNIT"
fi
echo "keepalived.conf applied"
