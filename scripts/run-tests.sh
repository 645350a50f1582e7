#!/usr/bin/env bash
# `make test`'s test run: the suite in two pytest processes side by side, so a warm run fits its
# 30-minute budget on a 2-core machine. The real-cluster and fault tests (tests/e2e, tests/chaos)
# spend most of their time waiting on real servers, kubelets and timers; everything else runs
# beside them. Measured warm on 2 cores, the two groups take about as long as each other (on a
# quiet machine 17 min 17 s and 16 min 53 s, where one process took 33 min 42 s; with seven other
# test runs loading it, 25 min 45 s and 30 min 27 s), so a split by directory needs no list of
# durations to keep up to date.
# Each process prints its 15 slowest tests; the e2e + chaos output follows the other's, and the
# last lines repeat both processes' FAILED/ERROR lines, so a CI page that keeps only the tail of
# the output still names every failing test. Exits non-zero when either process failed. A Ctrl-C (or SIGTERM) stops both, each tearing down its
# fixtures (servers, control plane, real node) as pytest does on an interrupt.
set -uo pipefail
PY="${PY:-.venv/bin/python}"
log="$(mktemp -t workerfleet-e2e-chaos-tests-XXXXXX.log)"
rest_log="$(mktemp -t workerfleet-other-tests-XXXXXX.log)"
# A background command of a script starts with SIGINT ignored, and Python then never raises
# KeyboardInterrupt: restore the handler so an interrupt tears the group down cleanly.
"$PY" -c 'import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))' \
  -p no:cacheprovider --durations=15 tests/e2e tests/chaos >"$log" 2>&1 &
heavy_pid=$!
stop_heavy() {
  kill -INT "$heavy_pid" 2>/dev/null
  # Teardown is bounded: after a minute the group is killed outright.
  for _ in $(seq 60); do kill -0 "$heavy_pid" 2>/dev/null || break; sleep 1; done
  kill -TERM "$heavy_pid" 2>/dev/null
  wait "$heavy_pid" 2>/dev/null
  echo "==== tests/e2e and tests/chaos (interrupted) ===="
  tail -n 40 "$log"
  rm -f "$log" "$rest_log"
  exit 130
}
trap stop_heavy INT TERM
"$PY" -m pytest -p no:cacheprovider --durations=15 tests --ignore=tests/e2e --ignore=tests/chaos \
  2>&1 | tee "$rest_log"
rest=${PIPESTATUS[0]}
wait "$heavy_pid"
heavy=$?
trap - INT TERM
echo
echo "==== tests/e2e and tests/chaos (ran alongside the tests above) ===="
cat "$log"
# pytest's short summary lines ("FAILED path::test - reason", "ERROR path::test - reason").
failures="$(grep -hE '^(FAILED|ERROR) tests/' "$rest_log" "$log")"
rm -f "$log" "$rest_log"
echo
if [ -n "$failures" ]; then
  echo "==== failing tests (both processes) ===="
  echo "$failures"
fi
echo "make test: other tests exit $rest, e2e + chaos exit $heavy"
[ "$rest" = 0 ] && [ "$heavy" = 0 ]
