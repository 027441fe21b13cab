#!/usr/bin/env bash
# A Python virtualenv with the Confluent client (confluent-kafka's
# SchemaRegistryClient, AvroSerializer, AvroDeserializer), for the test that
# checks a real third-party client works against backflow's schema registry.
# Idempotent; prints the venv's python as its last line.
set -euo pipefail
CACHE=${BACKFLOW_CACHE:-$HOME/.cache/backflow}
VENV=$CACHE/venv
PIN='confluent-kafka[avro,schemaregistry]==2.13.0'
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$CACHE"
  python3 -m venv "$VENV" >&2
fi
if [ "$(cat "$VENV/.backflow-pin" 2>/dev/null)" != "$PIN" ]; then
  echo "[python-env] installing $PIN into $VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "$PIN" >&2
  echo "$PIN" >"$VENV/.backflow-pin"
fi
echo "$VENV/bin/python"
