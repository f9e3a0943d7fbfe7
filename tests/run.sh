#!/usr/bin/env bash
# The project's test command (README): installs what the tests need, then runs the whole suite.
#   bash tests/run.sh [pytest args...]
# Creates ./.venv (Python 3.11) if missing, installs requirements-dev.txt into it, installs
# Debian's chromium for the browser tests when it is missing (needs root or sudo), runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

exec .venv/bin/python -m pytest "$@"
