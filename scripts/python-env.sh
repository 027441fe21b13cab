#!/usr/bin/env bash
# A Python virtualenv with Confluent's own client (confluent-kafka's
# SchemaRegistryClient, AvroSerializer, AvroDeserializer), for the test that
# checks a real third-party client works against backflow's schema registry
# (tests/tests/e2e/registry.rs, tests/python/confluent_client.py).
#
# Idempotent: creates ${BACKFLOW_CACHE:-$HOME/.cache/backflow}/venv with
# `python3 -m venv` if absent, installs the pinned packages when the pins
# changed, and prints the venv's python as its last stdout line (everything
# else goes to stderr).
set -euo pipefail
CACHE=${BACKFLOW_CACHE:-$HOME/.cache/backflow}
VENV=$CACHE/venv

# confluent-kafka[avro] and everything it pulls in, pinned so every run tests
# the same client. (2.16.1 needs a certifi newer than the package index here.)
REQUIREMENTS='confluent-kafka[avro]==2.16.0
anyio==4.16.0
attrs==26.1.0
Authlib==1.9.9
avro==1.12.2
cachetools==8.0.1
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
cryptography==50.0.2
fastavro==1.13.1
h11==0.16.0
httpcore2==2.16.2
httpx2==2.16.2
idna==3.20
joserfc==1.8.0
pycparser==3.12
requests==2.34.2
truststore==0.10.5
typing_extensions==4.16.0
urllib3==2.8.0'

if [ ! -x "$VENV/bin/python" ]; then
  command -v python3 >/dev/null || { echo "[python-env] python3 not found on PATH" >&2; exit 1; }
  mkdir -p "$CACHE"
  echo "[python-env] creating $VENV" >&2
  python3 -m venv "$VENV" >&2
fi
if [ "$(cat "$VENV/.backflow-requirements" 2>/dev/null)" != "$REQUIREMENTS" ]; then
  echo "[python-env] installing confluent-kafka[avro] and its pinned dependencies into $VENV" >&2
  printf '%s\n' "$REQUIREMENTS" >"$VENV/requirements.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$VENV/requirements.txt" >&2
  "$VENV/bin/python" -c 'import confluent_kafka.schema_registry.avro, fastavro' >&2
  printf '%s' "$REQUIREMENTS" >"$VENV/.backflow-requirements"
fi
echo "$VENV/bin/python"
