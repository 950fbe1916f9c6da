#!/usr/bin/env bash
# Debian's PostgreSQL server, for the history tests (tests/pgserver.py starts a throwaway server from
# its binaries on a free port). Installs only when no server binaries are found; needs root or sudo.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "postgresql: not installed and no apt-get here: install the PostgreSQL server (initdb, pg_ctl)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "postgresql: installing Debian's package for the history tests"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql
