#!/usr/bin/env bash
# Installs what renders and lints backflow's Helm chart (helm/backflow)
# offline: Helm v4's Go SDK as a library, from the PyPI package
# helm-python-sdk (libhelm_c, a C ABI over helm.sh/helm/v4, called through
# ctypes; no helm binary, no Go toolchain, no cluster). scripts/helm_render.py
# drives it; tests/tests/e2e/helm_chart.rs runs that.
#
# Idempotent: creates ${BACKFLOW_CACHE:-$HOME/.cache/backflow}/helm-venv with
# `python3 -m venv` if absent, installs the pinned package when the pin
# changed (a 75 MB wheel, once), and prints the venv's python as its last
# stdout line (everything else goes to stderr). A second run takes well under
# a second.
set -euo pipefail
CACHE=${BACKFLOW_CACHE:-$HOME/.cache/backflow}
VENV=$CACHE/helm-venv
# helm-python-sdk 0.2.2 embeds Helm v4.2.3 (helm_sdk_version()).
REQUIREMENTS='helm-python-sdk==0.2.2'

log() { printf '[helm-setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  command -v python3 >/dev/null || { log "python3 not found on PATH"; exit 1; }
  mkdir -p "$CACHE"
  log "creating $VENV"
  python3 -m venv "$VENV" >&2
fi
if [ "$(cat "$VENV/.backflow-requirements" 2>/dev/null)" != "$REQUIREMENTS" ]; then
  log "installing $REQUIREMENTS (Helm v4 as a library) into $VENV"
  printf '%s\n' "$REQUIREMENTS" >"$VENV/requirements.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$VENV/requirements.txt" >&2
  "$VENV/bin/python" -c 'import helm_python as h; print("[helm-setup] Helm", h.helm_sdk_version(), "via helm-python-sdk", h.__version__)' >&2
  printf '%s' "$REQUIREMENTS" >"$VENV/.backflow-requirements"
fi
echo "$VENV/bin/python"
