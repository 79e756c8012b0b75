# Package work on the stack's hosts: apt that waits for another apt instead of failing, Grafana's
# repository trusting exactly the pinned keys, and pinned, held packages.

APT_LOCK_TIMEOUT_S=600
APT_LOCK_POLL_S=2
APT_LISTS_FRESH_S=600
APT_LISTS_STAMP=/var/lib/lokistack/apt-lists.stamp

# apt_get ARGS...: apt-get that waits (bounded) for the dpkg and apt locks instead of failing at once.
apt_get() {
  apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT_S" "$@"
}

# apt_lists_update: apt-get update that waits (bounded by APT_LOCK_TIMEOUT_S, looking again every
# APT_LOCK_POLL_S) while another apt holds the lock on its package lists: DPkg::Lock::Timeout
# covers dpkg's locks only, and apt 2.6's update fails at once on /var/lib/apt/lists/lock, which
# apt-daily, unattended-upgrades or cloud-init hold right after a first boot. Any other failure
# ends it at once, with apt's status.
apt_lists_update() {
  local deadline out status waiting=0
  deadline=$(($(date +%s) + APT_LOCK_TIMEOUT_S))
  while :; do
    status=0
    out=$(apt_get update -q 2>&1) || status=$?
    printf '%s\n' "$out"
    if [ "$status" -eq 0 ] || ! grep -q '^E: Could not get lock .*/lists/lock' <<<"$out"; then
      return "$status"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "apt's package lists are still locked by another apt (named above) after ${APT_LOCK_TIMEOUT_S} s;" \
        "not updating them: run this step again once it has ended" >&2
      return "$status"
    fi
    [ "$waiting" = 1 ] || echo "another apt holds apt's package lists; waiting for it (at most ${APT_LOCK_TIMEOUT_S} s)"
    waiting=1
    sleep "$APT_LOCK_POLL_S"
  done
}

# apt_sources_digest: what apt's package lists are made from (its sources files).
apt_sources_digest() {
  local file
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ ! -f "$file" ] || printf '%s\n' "$file" "$(cat "$file")"
  done | sha256sum | cut -d ' ' -f 1
}

# apt_update [force]: apt-get update, unless one of ours succeeded less than APT_LISTS_FRESH_S ago
# from the same sources (APT_LISTS_STAMP holds their digest; its time is the update's). A first
# deploy's setup steps on a host each install packages, one after another: one update serves them
# all. "force": update all the same (what an install from such lists could not find).
apt_update() {
  local digest age
  digest=$(apt_sources_digest)
  if [ "${1:-}" != force ] && [ -f "$APT_LISTS_STAMP" ] && [ "$(cat "$APT_LISTS_STAMP")" = "$digest" ]; then
    age=$(($(date +%s) - $(stat -c %Y "$APT_LISTS_STAMP")))
    if [ "$age" -ge 0 ] && [ "$age" -lt "$APT_LISTS_FRESH_S" ]; then
      return 0
    fi
  fi
  apt_lists_update || return  # no stamp for a failed update, also where errexit is off
  mkdir -p "${APT_LISTS_STAMP%/*}"
  printf '%s\n' "$digest" >"$APT_LISTS_STAMP"
}

# ensure_packages PACKAGE...: installs the packages that are not installed yet.
ensure_packages() {
  local missing=() package
  clear_stale_start_guard
  for package in "$@"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)" = installed ] || missing+=("$package")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    with_fresh_lists "${missing[*]}" packages_install "${missing[@]}"
  fi
}

# packages_install PACKAGE...: installs the packages as Debian has them.
packages_install() {
  DEBIAN_FRONTEND=noninteractive apt_get install -y -q --no-install-recommends "$@"
}

# with_fresh_lists WHAT INSTALL...: runs the install command INSTALL...; if it fails (lists of a few
# minutes ago may name a build the mirror no longer has), apt's lists are updated and it runs once
# more. Its status is the last run's (or the update's, if that failed).
with_fresh_lists() {
  local what=$1
  shift
  "$@" && return 0
  echo "installing ${what} failed; updating apt's lists and trying once more"
  apt_update force || return
  "$@"
}

# grafana_repository REPO_URL KEY_URL FINGERPRINTS
# Adds Grafana's package repository. apt trusts exactly the primary keys FINGERPRINTS (separated
# by spaces) from the key file at KEY_URL, with their subkeys: nothing else that file holds. The
# keyring is made again when KEY_URL or the pinned set changed (a stamp beside it records both),
# and when a pinned key in it has expired, been revoked or ends within 30 days (a key whose expiry
# the publisher extended is fetched again).
grafana_repository() {
  local repo=$1 key_url=$2 fingerprints=$3 keyring=/etc/apt/keyrings/grafana.gpg
  local stamp=/etc/apt/keyrings/grafana.pinned sources=/etc/apt/sources.list.d/grafana.list line
  ensure_packages gnupg curl
  if [ ! -s "$keyring" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "${key_url} ${fingerprints}" ] \
    || pinned_keys_ending "$keyring" "$fingerprints"; then
    pinned_keyring "$key_url" "$fingerprints" "$keyring"
    printf '%s %s\n' "$key_url" "$fingerprints" >"$stamp"
  fi
  line="deb [signed-by=${keyring}] ${repo} stable main"
  if [ "$(cat "$sources" 2>/dev/null || true)" != "$line" ]; then
    echo "$line" >"$sources"
    apt_update force
  fi
}

# pinned_keyring KEY_URL FINGERPRINTS KEYRING: KEYRING made of exactly the pinned primary keys.
pinned_keyring() (
  set -euo pipefail
  local url=$1 fingerprints=$2 keyring=$3 work present fpr exported
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  export GNUPGHOME="${work}/gnupg"
  install -d -m 0700 "$GNUPGHOME"
  curl --proto '=https' --tlsv1.2 -fsSL --retry 3 --retry-delay 2 -o "${work}/keys.asc" "$url"
  gpg --batch --quiet --import "${work}/keys.asc" 2>/dev/null  # a throwaway keyring: whatever the file holds
  present=$(gpg --batch --with-colons --list-keys | awk -F: '$1 == "pub" {want = 1; next} want && $1 == "fpr" {print $10; want = 0}')
  for fpr in $fingerprints; do
    if ! grep -qx "$fpr" <<<"$present"; then
      echo "${url} does not hold the pinned key ${fpr}; refusing it (a key rotation is for a human to check)" >&2
      return 1
    fi
  done
  for fpr in $present; do
    case " ${fingerprints} " in
      *" ${fpr} "*) ;;
      *) echo "${url} also holds key ${fpr}, which is not pinned: not trusted" ;;
    esac
  done
  # shellcheck disable=SC2086  # one argument per pinned fingerprint
  gpg --batch --export $fingerprints >"${work}/pinned.gpg"
  exported=$(gpg --batch --with-colons --show-keys "${work}/pinned.gpg" \
    | awk -F: '$1 == "pub" {want = 1; next} want && $1 == "fpr" {print $10; want = 0}' | sort | tr '\n' ' ')
  if [ "$exported" != "$(tr ' ' '\n' <<<"$fingerprints" | grep . | sort | tr '\n' ' ')" ]; then
    echo "the keyring made from ${url} holds ${exported}, not exactly the pinned keys" >&2
    return 1
  fi
  install -d -m 0755 /etc/apt/keyrings
  install -m 0644 "${work}/pinned.gpg" "$keyring"
  echo "trusting ${fingerprints} from ${url}"
)

# pinned_keys_ending KEYRING FINGERPRINTS: true when a pinned primary key in KEYRING has expired,
# is revoked, or ends within 30 days.
pinned_keys_ending() {
  local keyring=$1 fingerprints=$2 soon
  soon=$(($(date +%s) + 30 * 86400))
  gpg --batch --with-colons --show-keys "$keyring" 2>/dev/null | awk -F: -v pins=" ${fingerprints} " -v soon="$soon" '
    $1 == "pub" { validity = $2; ends = $7; want = 1; next }
    want && $1 == "fpr" {
      want = 0
      if (index(pins, " " $10 " ") && (validity == "e" || validity == "r" || (ends != "" && ends + 0 < soon))) found = 1
    }
    END { exit found ? 0 : 1 }'
}

# install_pinned PACKAGE VERSION
# Installs the repository's build of PACKAGE whose upstream version is VERSION (X.Y.Z matches
# X.Y.Z and X.Y.Z-N) and holds it (also when it was installed already). Services are not started
# meanwhile where the package honours policy-rc.d (the stack restarts them itself, in order); a
# package that calls systemctl itself needs a unit condition (see loki-setup.sh). Prints
# "installed ..." when it changed anything.
install_pinned() {
  local package=$1 version=$2 state installed exact status=0
  clear_stale_start_guard
  state=$(dpkg-query -W -f='${db:Status-Status} ${Version}' "$package" 2>/dev/null || true)
  installed=${state#installed }
  if [ "${state%% *}" = installed ] && { [ "$installed" = "$version" ] || [ "${installed%-*}" = "$version" ]; }; then
    apt-mark hold "$package" >/dev/null
    return 0
  fi
  apt_update
  exact=$(pinned_candidate "$package" "$version")
  if [ -z "$exact" ]; then
    apt_update force  # lists of a few minutes ago may not hold a version published since
    exact=$(pinned_candidate "$package" "$version")
  fi
  if [ -z "$exact" ]; then
    echo "${package} ${version} is not in the package repository" >&2
    return 1
  fi
  block_service_starts
  # The stack replaces the packages' config files: on upgrades dpkg keeps ours instead of asking.
  with_fresh_lists "${package} ${exact}" pinned_install "$package" "$exact" || status=$?
  unblock_service_starts
  [ "$status" -eq 0 ] || return "$status"
  apt-mark hold "$package" >/dev/null
  echo "installed ${package} ${exact}"
}

# pinned_candidate PACKAGE VERSION: the repository's build of PACKAGE whose upstream version is
# VERSION, from apt's lists (nothing if they have none).
pinned_candidate() {
  local candidates
  candidates=$(apt-cache madison "$1")  # whole, before awk: awk's early exit must not fail a pipe
  awk -v v="$2" '{ u = $3; sub(/-[^-]*$/, "", u) } $3 == v || u == v { print $3; exit }' <<<"$candidates"
}

# pinned_install PACKAGE EXACT: installs that build; dpkg keeps the stack's config files.
pinned_install() {
  DEBIAN_FRONTEND=noninteractive apt_get install -y -q --allow-change-held-packages --allow-downgrades \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$1=$2"
}

POLICY_RC_D=/usr/sbin/policy-rc.d
POLICY_RC_D_OURS=0
POLICY_RC_D_CONTENT='#!/bin/sh
# loki-stack: no service starts during a package install
exit 101'

# block_service_starts / unblock_service_starts: a policy-rc.d that denies starts, removed again
# also when the script fails (an administrator's own policy-rc.d stays as it is).
block_service_starts() {
  if [ ! -e "$POLICY_RC_D" ]; then
    printf '%s\n' "$POLICY_RC_D_CONTENT" >"$POLICY_RC_D"
    chmod 0755 "$POLICY_RC_D"
    POLICY_RC_D_OURS=1
    trap unblock_service_starts EXIT
  fi
}

unblock_service_starts() {
  if [ "$POLICY_RC_D_OURS" -eq 1 ]; then
    rm -f "$POLICY_RC_D"
    POLICY_RC_D_OURS=0
  fi
}

# clear_stale_start_guard: our policy-rc.d, left by a package step that was killed (its EXIT trap
# never ran), goes before any package work: otherwise no service would ever start from a package
# again. Package steps on a host run one at a time, so no other step of ours holds it now; an
# administrator's own policy-rc.d (other content) stays.
clear_stale_start_guard() {
  if [ "$POLICY_RC_D_OURS" -eq 0 ] && [ -f "$POLICY_RC_D" ] \
    && [ "$(cat "$POLICY_RC_D")" = "$POLICY_RC_D_CONTENT" ]; then
    rm -f "$POLICY_RC_D"
    echo "removed ${POLICY_RC_D}, a start guard an earlier run left"
  fi
}
