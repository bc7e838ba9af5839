#!/usr/bin/env bash
# Run a command with PLAYERPULSE_TEST_KAFKA_BROKERS pointing at a fresh Apache Kafka
# broker, which is stopped (and its data removed) afterwards, whatever happens.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$(mktemp -d "${TMPDIR:-/tmp}/playerpulse-kafka.XXXXXX")"
cleanup() {
  "$here/apache-kafka.sh" stop "$dir" || true
  rm -rf "$dir"
}
trap cleanup EXIT
address="$("$here/apache-kafka.sh" start "$dir" | tail -n 1)"
echo "Apache Kafka at $address" >&2
PLAYERPULSE_TEST_KAFKA_BROKERS="$address" PLAYERPULSE_TEST_KAFKA_PIDFILE="$dir/kafka.pid" "$@"
