#!/usr/bin/env bash
# Run a command with PLAYERPULSE_TEST_KAFKA_BROKERS pointing at a fresh Apache Kafka
# broker (app/embedded/kafka.py: its JVM and jars come through pip), stopped and its data
# removed afterwards, whatever happens. PLAYERPULSE_TEST_KAFKA_PIDFILE names a file with
# the broker JVM's pid (tests freeze it with SIGSTOP).
#
#   PYTHON=.venv/bin/python scripts/with-apache-kafka.sh COMMAND [ARGS...]
set -euo pipefail
python="${PYTHON:-python3}"
dir="$(mktemp -d "${TMPDIR:-/tmp}/playerpulse-kafka.XXXXXX")"
runner=""
cleanup() {
  if [[ -n "$runner" ]]; then
    # The runner stops the broker cleanly on SIGTERM; it dies with us in any case.
    kill -TERM "$runner" 2>/dev/null || true
    wait "$runner" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# It prints the address once the broker serves clients, then runs until SIGTERM.
"$python" -m app.embedded.kafka run "$dir" >"$dir/address" &
runner=$!
until grep -q . "$dir/address" 2>/dev/null; do
  if ! kill -0 "$runner" 2>/dev/null; then
    wait "$runner" || true
    runner=""
    echo "with-apache-kafka: the broker did not start (see the log above)" >&2
    exit 1
  fi
  sleep 0.2
done
address="$(head -n 1 "$dir/address")"
echo "Apache Kafka at $address" >&2
PLAYERPULSE_TEST_KAFKA_BROKERS="$address" PLAYERPULSE_TEST_KAFKA_PIDFILE="$dir/kafka/kafka.pid" "$@"
