#!/usr/bin/env bash
# The suite, as `make test` runs it: PYTHON (default .venv/bin/python) [pytest args...].
#
# Most tests wait on something (process start-ups, servers, timeouts, another host), so whole
# modules run on HVDTRAIN_TEST_WORKERS parallel workers (default 3; --dist loadfile keeps a
# module's shared fixtures to one worker, longest modules first: tests/conftest.py). The tests
# marked `timing` bound how fast hvdtrain reacts (a killed worker ends the job within 10 s) and run
# alone afterwards, so the machine's load is never what they measure. Both phases always run; the
# exit status is non-zero when either failed. The ten slowest tests of each phase are listed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
shift || true
"$PYTHON" -m pytest -q -n "${HVDTRAIN_TEST_WORKERS:-3}" --dist loadfile -m "not timing" \
    --durations=10 "$@"
parallel=$?
"$PYTHON" -m pytest -q -m timing --durations=10 "$@"
timing=$?
echo "make test: parallel phase exit $parallel, timing phase exit $timing"
[ "$parallel" -eq 0 ] && [ "$timing" -eq 0 ]
