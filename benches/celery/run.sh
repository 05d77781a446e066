#!/usr/bin/env bash
# Celery baseline benchmark: venv + fresh PostgreSQL database + benches/celery/bench.py.
# Usage: benches/celery/run.sh [N]   (or N=... in the environment; default 5000)
set -euo pipefail
cd "$(dirname "$0")/../.."

N="${1:-${N:-5000}}"
VENV="${CELERY_VENV:-target/celery-venv}"
export PGOPTIONS="-c client_min_messages=warning"
PSQL=(psql -h 127.0.0.1 -U postgres -d test -v ON_ERROR_STOP=1 -qAt)
DB=warren_celery

if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r benches/celery/requirements.txt

"${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
"${PSQL[@]}" -c "CREATE DATABASE $DB"
trap '"${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true' EXIT

mkdir -p target/bench
"$VENV/bin/python" benches/celery/bench.py "$N"
