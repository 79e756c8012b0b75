#!/usr/bin/env bash
# Installs the files loki-stack delivers to this host. The script arrives on stdin and runs as
# root (sudo bash -s); the file contents are in it, base64-encoded, so no secret is ever on a
# command line. A file is replaced only when content, owner or mode differ (safe_replace: by
# rename from a root-only staging file, never through a link): a re-run with nothing changed
# changes nothing and does not run the follow-up command.
set -euo pipefail
umask 077
changed=0
# A follow-up (a reload) owed since a file changed: marked before the first change, cleared only
# once the follow-up succeeded, so that a run killed or failed in between is finished by the next
# one (render_install_script sets the marker's name when there is a follow-up).
FOLLOW_UP_DIR=${FOLLOW_UP_DIR:-/var/lib/lokistack/follow-up}
FOLLOW_UP_PENDING=

owe_follow_up() {
  if [ -n "$FOLLOW_UP_PENDING" ] && [ ! -e "$FOLLOW_UP_PENDING" ]; then
    install -d -m 0700 -o root -g root "$(dirname "$FOLLOW_UP_PENDING")"
    : >"$FOLLOW_UP_PENDING"
  fi
}

# install_file PATH OWNER GROUP MODE BASE64-CONTENT
install_file() {
  local path=$1 owner=$2 group=$3 mode=$4 content=$5 new
  new=$(mktemp)
  printf '%s' "$content" | base64 -d >"$new"
  if same_file "$new" "$path" "$owner" "$group" "$mode"; then
    rm -f "$new"
    return 0
  fi
  owe_follow_up
  safe_replace "$new" "$path" "$owner" "$group" "$mode"
  rm -f "$new"
  changed=$((changed + 1))
  echo "installed ${path} (${owner}:${group} ${mode})"
}

# remove_file PATH
# Removes PATH (a file loki-stack delivered before and no longer does) when it is there.
remove_file() {
  local path=$1
  if [ -e "$path" ] || [ -L "$path" ]; then
    owe_follow_up
    rm -f "$path"
    changed=$((changed + 1))
    echo "removed ${path}"
  fi
}
