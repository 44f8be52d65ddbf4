#!/usr/bin/env bash
# The full test suite, as CI runs it: system packages, Python test dependencies, a throwaway
# PostgreSQL cluster, then pytest twice: everything on SQLite (the embedded default), then the
# tests that run edges in-process and the store tests again on PostgreSQL. Extra arguments go
# to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh || echo "warning: could not install system packages" >&2
python3 -m pip install -q -e '.[test,fast,postgres]' || exit 1
if command -v npm >/dev/null 2>&1 && [ -f tests/browser/package.json ]; then
  (cd tests/browser && npm install --no-audit --no-fund --silent) ||
    echo "warning: npm install failed; browser tests will be skipped" >&2
fi

pg_dir=""
if [ -z "${BURROW_TEST_PG_URL:-}" ] && [ -x scripts/pg-test-cluster.sh ]; then
  if out=$(bash scripts/pg-test-cluster.sh start); then
    eval "$out"   # exports BURROW_TEST_PG_URL, BURROW_TEST_PG_PID, BURROW_TEST_PG_DIR
    pg_dir="${BURROW_TEST_PG_DIR:-}"
  else
    echo "warning: no PostgreSQL test cluster; PostgreSQL tests will be skipped" >&2
  fi
fi
cleanup() {
  if [ -n "$pg_dir" ]; then
    bash scripts/pg-test-cluster.sh stop "$pg_dir" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# pytest exits 5 when no test was collected: not a failure of the code under test.
run_pytest() {
  python3 -m pytest "$@"
  local rc=$?
  [ "$rc" -eq 5 ] && rc=0
  return "$rc"
}

echo "== test suite (SQLite store) =="
run_pytest "$@"
rc=$?
if [ -n "${BURROW_TEST_PG_URL:-}" ]; then
  echo "== store, control-plane and in-process edge tests on PostgreSQL =="
  BURROW_TEST_STORE=postgres run_pytest "$@" tests/unit/store tests/unit/admin tests/integration tests/e2e
  pg_rc=$?
  [ "$rc" -eq 0 ] && rc=$pg_rc
fi
exit "$rc"
