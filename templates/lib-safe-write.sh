# Writing files as root into directories a service may write to, without writing through a link.
#
# A file is made in a root-only staging directory on the target's filesystem, given its owner and
# mode there, and renamed over the target: rename(2) replaces a link planted at the target instead
# of following it, and nothing the service can reach is ever chowned or chmodded by root. The
# target's directory must belong to root, and no directory above it may be writable by anyone but
# root (unless sticky, as /tmp), so that no one can swap a directory on the way for a link.

SAFE_WRITE_STAGING=${SAFE_WRITE_STAGING:-/etc/lokistack/staging}

# safe_dir DIR: makes DIR (root, 0755) when missing; fails unless DIR is safe to write into.
safe_dir() {
  local dir=$1 above info
  if [ ! -e "$dir" ]; then
    safe_dir "$(dirname "$dir")"
    install -d -m 0755 -o root -g root "$dir"
  fi
  if [ -L "$dir" ] || [ ! -d "$dir" ] || [ "$(realpath -e "$dir")" != "$dir" ]; then
    echo "refusing to write into ${dir}: it is not a directory, or a link is on the way" >&2
    return 1
  fi
  if [ "$(stat -c %U "$dir")" != root ]; then
    echo "refusing to write into ${dir}: it belongs to $(stat -c %U "$dir"), not root" >&2
    return 1
  fi
  above=$(dirname "$dir")
  while [ "$above" != "$dir" ]; do
    info=$(stat -c '%U %a' "$above")
    # Writable by group or others is fine only with the sticky bit (no one renames another's entries).
    if [ "${info%% *}" != root ] || { [ $((8#${info#* } & 8#022)) -ne 0 ] && [ $((8#${info#* } & 8#1000)) -eq 0 ]; }; then
      echo "refusing to write into ${dir}: ${above} (${info}) can be changed by others than root" >&2
      return 1
    fi
    dir=$above
    above=$(dirname "$above")
  done
}

# safe_replace SOURCE TARGET OWNER GROUP MODE: TARGET becomes a copy of SOURCE with that owner and
# mode, by rename from a root-only staging file on TARGET's filesystem; a link at TARGET is replaced,
# never followed.
safe_replace() {
  local source=$1 target=$2 owner=$3 group=$4 mode=$5 dir tmp
  dir=$(dirname "$target")
  safe_dir "$dir"
  install -d -m 0700 -o root -g root "$SAFE_WRITE_STAGING"
  if [ "$(stat -c %d "$SAFE_WRITE_STAGING")" != "$(stat -c %d "$dir")" ]; then
    echo "refusing to write ${target}: ${dir} is not on the filesystem of ${SAFE_WRITE_STAGING}" >&2
    return 1
  fi
  tmp=$(mktemp "${SAFE_WRITE_STAGING}/write.XXXXXX")
  cat "$source" >"$tmp"
  chown "${owner}:${group}" "$tmp"
  chmod "$mode" "$tmp"
  mv -fT "$tmp" "$target"
}

# same_file SOURCE TARGET OWNER GROUP MODE: TARGET is a regular file (not a link) with SOURCE's
# content, that owner and mode.
same_file() {
  local source=$1 target=$2 owner=$3 group=$4 mode=$5
  [ -f "$target" ] && [ ! -L "$target" ] && cmp -s "$source" "$target" \
    && [ "$(stat -c '%U:%G %a' "$target")" = "${owner}:${group} ${mode#0}" ]
}
