#!/usr/bin/env bash
# `make test`'s test run: the suite in two pytest processes side by side, so a warm run fits its
# 30-minute budget on a 2-core machine. The real-cluster, fault and packaging tests (tests/e2e,
# tests/chaos, tests/packaging) spend most of their time waiting on real servers, kubelets,
# timers and helm/promtool/checkov subprocesses; everything else runs beside them. The split is
# by directory, so it needs no list of durations to keep up to date. Measured warm on 2 cores
# (clean clone at e78f7ff) the rest took 28 min 27 s beside tests/e2e + tests/chaos's 18 min
# 38 s; tests/packaging (~4 min of the rest) then moved to the shorter group. At b9384e6 (a busy
# machine) the rest took 28 min 57 s beside that group's 24 min 40 s, so the alert rules' tests
# on a real Prometheus (ALERT_TESTS, ~100 s, packaging in all but their directory) moved too.
# Each process prints its 15 slowest tests; the e2e + chaos + packaging output follows the
# other's, and the last lines repeat both processes' FAILED/ERROR lines, so a CI page that keeps
# only the tail of the output still names every failing test. Exits non-zero when either process
# failed. A Ctrl-C (or SIGTERM) stops both, each tearing down its fixtures (servers, control
# plane, real node) as pytest does on an interrupt.
set -uo pipefail
PY="${PY:-.venv/bin/python}"
log="$(mktemp -t workerfleet-e2e-chaos-packaging-tests-XXXXXX.log)"
rest_log="$(mktemp -t workerfleet-other-tests-XXXXXX.log)"
# They stay beside the operator's fixtures (tests/workerfleet_operator/conftest.py), which pytest
# loads for a file it is given by path.
ALERT_TESTS=(
  tests/workerfleet_operator/test_alerts_on_prometheus.py
  tests/workerfleet_operator/test_dead_letter_stale_alert.py
)
# A background command of a script starts with SIGINT ignored, and Python then never raises
# KeyboardInterrupt: restore the handler so an interrupt tears the group down cleanly.
"$PY" -c 'import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))' \
  -p no:cacheprovider --durations=15 tests/e2e tests/chaos tests/packaging "${ALERT_TESTS[@]}" \
  >"$log" 2>&1 &
heavy_pid=$!
stop_heavy() {
  kill -INT "$heavy_pid" 2>/dev/null
  # Teardown is bounded: after a minute the group is killed outright.
  for _ in $(seq 60); do kill -0 "$heavy_pid" 2>/dev/null || break; sleep 1; done
  kill -TERM "$heavy_pid" 2>/dev/null
  wait "$heavy_pid" 2>/dev/null
  echo "==== tests/e2e, tests/chaos and tests/packaging (interrupted) ===="
  tail -n 40 "$log"
  rm -f "$log" "$rest_log"
  exit 130
}
trap stop_heavy INT TERM
"$PY" -m pytest -p no:cacheprovider --durations=15 tests --ignore=tests/e2e --ignore=tests/chaos \
  --ignore=tests/packaging "${ALERT_TESTS[@]/#/--ignore=}" \
  2>&1 | tee "$rest_log"
rest=${PIPESTATUS[0]}
wait "$heavy_pid"
heavy=$?
trap - INT TERM
echo
echo "==== tests/e2e, tests/chaos and tests/packaging (ran alongside the tests above) ===="
cat "$log"
# pytest's short summary lines ("FAILED path::test - reason", "ERROR path::test - reason").
failures="$(grep -hE '^(FAILED|ERROR) tests/' "$rest_log" "$log")"
rm -f "$log" "$rest_log"
echo
if [ -n "$failures" ]; then
  echo "==== failing tests (both processes) ===="
  echo "$failures"
fi
echo "make test: other tests exit $rest, e2e + chaos + packaging exit $heavy"
[ "$rest" = 0 ] && [ "$heavy" = 0 ]
