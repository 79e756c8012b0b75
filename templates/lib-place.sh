# place STAGED TARGET MODE OWNER GROUP
# Installs STAGED at TARGET with MODE/OWNER/GROUP when content or ownership differ (safe_replace:
# never through a link); sets changed=1 (a global the caller initialises to 0) when it did.
place() {
  local staged=$1 target=$2 mode=$3 owner=$4 group=$5
  if same_file "$staged" "$target" "$owner" "$group" "$mode"; then
    return 0
  fi
  safe_replace "$staged" "$target" "$owner" "$group" "$mode"
  # shellcheck disable=SC2034  # read by the caller
  changed=1
  echo "placed ${target}"
}
