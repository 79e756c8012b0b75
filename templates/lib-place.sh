# place STAGED TARGET MODE OWNER GROUP
# Installs STAGED at TARGET with MODE/OWNER/GROUP when content or ownership differ; sets
# changed=1 (a global the caller initialises to 0) when it did.
place() {
  local staged=$1 target=$2 mode=$3 owner=$4 group=$5
  if [ -f "$target" ] && cmp -s "$staged" "$target" \
    && [ "$(stat -c '%a %U %G' "$target")" = "${mode#0} ${owner} ${group}" ]; then
    return 0
  fi
  install -D -m "$mode" -o "$owner" -g "$group" "$staged" "$target"
  # shellcheck disable=SC2034  # read by the caller
  changed=1
  echo "placed ${target}"
}
