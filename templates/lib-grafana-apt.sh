# grafana_repository REPO_URL KEY_URL FINGERPRINT
# Adds Grafana's package repository once; its signing key must have FINGERPRINT.
grafana_repository() {
  local repo=$1 key_url=$2 fingerprint=$3 keyring=/etc/apt/keyrings/grafana.gpg
  local sources=/etc/apt/sources.list.d/grafana.list line work fingerprints
  if ! command -v gpg >/dev/null || ! command -v curl >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gnupg curl
  fi
  if [ ! -s "$keyring" ]; then
    work=$(mktemp -d)
    curl -fsSL -o "${work}/key.asc" "$key_url"
    fingerprints=$(gpg --show-keys --with-colons "${work}/key.asc" | awk -F: '$1 == "fpr" {print $10}')
    if ! grep -qx "$fingerprint" <<<"$fingerprints"; then
      echo "${key_url} is not the key with fingerprint ${fingerprint}; refusing it" >&2
      rm -rf "$work"
      return 1
    fi
    install -d -m 0755 /etc/apt/keyrings
    gpg --dearmor <"${work}/key.asc" >"${work}/key.gpg"
    install -m 0644 "${work}/key.gpg" "$keyring"
    rm -rf "$work"
  fi
  line="deb [signed-by=${keyring}] ${repo} stable main"
  if [ "$(cat "$sources" 2>/dev/null || true)" != "$line" ]; then
    echo "$line" >"$sources"
    apt-get update -q
  fi
}

# install_pinned PACKAGE VERSION
# Installs the repository's build of PACKAGE whose upstream version is VERSION (X.Y.Z matches
# X.Y.Z and X.Y.Z-N), holds it, and blocks service starts meanwhile: the stack restarts services
# itself, in order. Prints "installed" when it changed anything.
install_pinned() {
  local package=$1 version=$2 exact installed status=0 guard=/usr/sbin/policy-rc.d ours=0
  installed=$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || true)
  if [ "$installed" = "$version" ] || [ "${installed%-*}" = "$version" ]; then
    return 0
  fi
  apt-get update -q
  exact=$(apt-cache madison "$package" | awk -v v="$version" '{ u = $3; sub(/-[^-]*$/, "", u) } $3 == v || u == v { print $3; exit }')
  if [ -z "$exact" ]; then
    echo "${package} ${version} is not in the package repository" >&2
    return 1
  fi
  if [ ! -e "$guard" ]; then  # an administrator's own policy-rc.d stays as it is
    printf '#!/bin/sh\nexit 101\n' >"$guard"
    chmod 0755 "$guard"
    ours=1
  fi
  # The stack replaces the packages' config files: on upgrades dpkg keeps ours instead of asking.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-change-held-packages --allow-downgrades \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${package}=${exact}" || status=$?
  if [ "$ours" -eq 1 ]; then rm -f "$guard"; fi
  [ "$status" -eq 0 ] || return "$status"
  apt-mark hold "$package" >/dev/null
  echo "installed ${package} ${exact}"
}
