#!/usr/bin/env bash
# The test command behind `make test` (and so .ci/run): two pytest sessions at once. The unit and
# data tests (CPU-bound, seconds each) run beside the integration tests, which mostly wait on other
# processes (Airflow, Ray jobs, engines starting), so the suite's wall time is the integration
# tests' plus little. Exit status: the first failing session's; "no tests collected" (pytest's 5)
# in either is a failure.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
unit_log=$(mktemp /tmp/llmcf-unit-tests.XXXXXX)
unit_tmp=$(mktemp -d /tmp/llmcf-unit-basetemp.XXXXXX)
"$PY" -m pytest -q -p no:cacheprovider --durations=10 --basetemp="$unit_tmp" tests/unit tests/data \
    >"$unit_log" 2>&1 &
unit=$!
trap 'kill "$unit" 2>/dev/null; rm -rf "$unit_tmp" "$unit_log"' EXIT
"$PY" -m pytest -q --durations=25 tests/integration
integration_rc=$?
wait "$unit"
unit_rc=$?
echo "== tests/unit and tests/data (run beside tests/integration) =="
cat "$unit_log"
for rc in "$integration_rc" "$unit_rc"; do
    if [ "$rc" -eq 5 ]; then
        echo "no tests collected"
        exit 1
    fi
done
if [ "$integration_rc" -ne 0 ]; then
    exit "$integration_rc"
fi
exit "$unit_rc"
