#!/usr/bin/env bash
# The full test suite, as CI runs it: system packages, Python test dependencies, a throwaway
# PostgreSQL cluster for the store tests, then pytest. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh || echo "warning: could not install system packages" >&2
python3 -m pip install -q -e '.[test,fast,postgres]' || exit 1

pg_pid=""
if [ -z "${BURROW_TEST_PG_URL:-}" ] && [ -x scripts/pg-test-cluster.sh ]; then
  if out=$(bash scripts/pg-test-cluster.sh start); then
    eval "$out"   # sets BURROW_TEST_PG_URL and PG_TEST_CLUSTER_PID
    export BURROW_TEST_PG_URL
    pg_pid="${PG_TEST_CLUSTER_PID:-}"
  else
    echo "warning: no PostgreSQL test cluster; PostgreSQL tests will be skipped" >&2
  fi
fi

python3 -m pytest "$@"
rc=$?
if [ -n "$pg_pid" ]; then
  bash scripts/pg-test-cluster.sh stop "$pg_pid" >/dev/null 2>&1 || true
fi
# pytest exits 5 when no test was collected: not a failure of the code under test.
if [ "$rc" -eq 5 ]; then
  rc=0
fi
exit "$rc"
