#!/usr/bin/env bash
# Installs the files loki-stack delivers to this host. The script arrives on stdin and runs as
# root (sudo bash -s); the file contents are in it, base64-encoded, so no secret is ever on a
# command line. Each file is written next to its target under a temporary name, given its owner
# and mode, and moved over the target only when content, owner or mode differ: a re-run with
# nothing changed changes nothing and does not run the follow-up command.
set -euo pipefail
umask 077
changed=0

# install_file PATH OWNER GROUP MODE BASE64-CONTENT
install_file() {
  local path=$1 owner=$2 group=$3 mode=$4 content=$5 tmp dir
  dir=$(dirname "$path")
  # A missing directory is made 0755; an existing one keeps its mode (install -d would reset it).
  [ -d "$dir" ] || install -d -m 0755 "$dir"
  tmp=$(mktemp "${path}.XXXXXX")
  printf '%s' "$content" | base64 -d >"$tmp"
  chown "${owner}:${group}" "$tmp"
  chmod "$mode" "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path" \
    && [ "$(stat -c '%U:%G %a' "$path")" = "$(stat -c '%U:%G %a' "$tmp")" ]; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$path"
    changed=$((changed + 1))
    echo "installed ${path} (${owner}:${group} ${mode})"
  fi
}

# remove_file PATH
# Removes PATH (a file loki-stack delivered before and no longer does) when it is there.
remove_file() {
  local path=$1
  if [ -e "$path" ] || [ -L "$path" ]; then
    rm -f "$path"
    changed=$((changed + 1))
    echo "removed ${path}"
  fi
}
