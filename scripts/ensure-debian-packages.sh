#!/usr/bin/env bash
# What the tests need from Debian: the PostgreSQL server binaries (the tests start their own
# cluster with initdb and pg_ctl), rsync (a pack's transfer list is run through it) and curl
# (the documentation's examples of the HTTP server run as tests).
# Missing ones are installed as root; as another user, say what to run.
set -euo pipefail
missing=()
if [ -z "${RUNBROKER_TEST_POSTGRES:-}" ] \
  && ! command -v initdb >/dev/null 2>&1 \
  && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)  # unless the tests use an existing server (RUNBROKER_TEST_POSTGRES)
fi
if ! command -v rsync >/dev/null 2>&1; then
  missing+=(rsync)
fi
if ! command -v curl >/dev/null 2>&1; then
  missing+=(curl)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "The tests need Debian packages that are missing: run 'sudo apt-get install ${missing[*]}'" >&2
  echo "(for PostgreSQL, RUNBROKER_TEST_POSTGRES may name an existing server instead)." >&2
  exit 1
fi
echo "Installing ${missing[*]} (Debian packages) for the tests ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
