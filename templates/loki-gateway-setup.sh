#!/usr/bin/env bash
# Prepares a Loki node for its gateway (runs as root, on stdin; loki-stack sets the parameters
# above this script): Debian's nginx without its default site, and the staging directory.
set -euo pipefail
: "${DEFAULT_SITE:?}" "${STAGE_DIR:?}"

# nginx-common's post-install links the default site (port 80, all addresses) on a first
# install unless something is at that path already; a placeholder keeps it off, also across
# upgrades. An existing link (nginx installed before) goes.
install -d -m 0755 -o root -g root /etc/nginx /etc/nginx/sites-enabled
if [ -L "$DEFAULT_SITE" ] || [ ! -e "$DEFAULT_SITE" ]; then
  rm -f "$DEFAULT_SITE"
  echo "# loki-stack: no default site on a Loki node; the Loki gateway is in /etc/nginx/conf.d." >"$DEFAULT_SITE"
fi
export DEBIAN_FRONTEND=noninteractive
ensure_packages nginx curl
install -d -m 0700 -o root -g root "$STAGE_DIR"
