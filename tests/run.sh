#!/usr/bin/env bash
# The project's test command (README): installs what the tests need, then runs the whole suite.
#   bash tests/run.sh [pytest args...]
# Creates ./.venv (Python 3.11) if missing, installs exactly the tested set into it
# (requirements-lock.txt: pip-compile of pyproject.toml's app, train and dev extras) and then this
# checkout as an editable package without dependencies (skinnet, training, skinnet_testkit),
# installs Debian's chromium for the browser tests when it is missing (needs root or sudo), runs pytest.
# Regenerate the lock after changing pyproject.toml's dependencies:
#   pip-compile --allow-unsafe --strip-extras --no-emit-find-links --no-emit-index-url \
#               --extra app --extra train --extra dev -o requirements-lock.txt pyproject.toml
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-lock.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

exec .venv/bin/python -m pytest "$@"
