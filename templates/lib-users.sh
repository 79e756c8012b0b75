# system_user NAME HOME
# A system user NAME whose primary group is its own group NAME (made first). Run it before a
# package whose post-install script makes the user itself: on Debian 12 `adduser --system NAME`
# puts a new system user into nogroup and makes no group NAME. A user such a script made
# earlier is moved into the group NAME.
system_user() {
  local name=$1 home=$2
  getent group "$name" >/dev/null || addgroup --system --quiet "$name"
  if ! id -u "$name" >/dev/null 2>&1; then
    adduser --system --quiet --ingroup "$name" --home "$home" --no-create-home --disabled-password \
      --shell /usr/sbin/nologin "$name"
  elif [ "$(id -gn "$name")" != "$name" ]; then
    usermod -g "$name" "$name"
    echo "moved ${name} into its own group ${name}"
  fi
}
