#!/usr/bin/env bash
# The tests start their own PostgreSQL cluster, so they need the server binaries (initdb,
# pg_ctl). Install them from Debian when missing; as a non-root user, say what to run.
set -euo pipefail
if [ -n "${RUNBROKER_TEST_POSTGRES:-}" ]; then
  exit 0  # the tests use an existing server instead
fi
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "PostgreSQL server binaries are missing: run 'sudo apt-get install postgresql'," >&2
  echo "or set RUNBROKER_TEST_POSTGRES to the URL of an existing server." >&2
  exit 1
fi
echo "Installing PostgreSQL (Debian package) for the tests ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
