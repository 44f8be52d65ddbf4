#!/usr/bin/env bash
# Debian packages the test suite uses: real servers and clients (OpenSSH, PostgreSQL, the pebble
# ACME test CA) and load tools. Installs only what is missing; needs root (CI runs as root).
set -euo pipefail
packages=(curl openssh-server openssh-client postgresql pebble wrk nghttp2-client chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js may come from elsewhere than Debian (the machine image ships NodeSource's build, which
# bundles npm); only ask Debian for it when the commands are missing.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "note: not root; tests needing ${missing[*]} will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The postgresql package may start a system cluster; the tests run their own on a free port.
