#!/usr/bin/env python3
"""Renders backflow's Helm chart offline with Helm's own template engine and
prints the manifests as JSON, for tests (tests/tests/e2e/helm_chart.rs) and for
looking at what a values file produces.

Helm here is the Helm v4 Go SDK inside the PyPI package helm-python-sdk
(a C library called through ctypes; no helm binary, no cluster), installed by
scripts/helm-setup.sh into ${BACKFLOW_CACHE:-~/.cache/backflow}/helm-venv.
This script re-runs itself with that virtualenv's python when started with
another one.

Usage:
  scripts/helm_render.py [template] [-f VALUES]... [--set K=V]...
                         [--set-string K=V]... [--release NAME]
                         [--namespace NS] [CHART]
      A JSON list of the rendered objects (as `helm template` would apply
      them), in template order. Exits 1 with Helm's message on a render
      error (e.g. a `fail` of the chart).
  scripts/helm_render.py notes [same options]
      The rendered NOTES.txt as a JSON string.
  scripts/helm_render.py lint [same options]
      {"messages": [{"severity", "path", "error"}], "errors": [...]} from
      Helm's linter (strict); exits 1 when it reports an error or warning.
  scripts/helm_render.py version
      {"helm_python_sdk": ..., "helm_c": ..., "helm": ...}

CHART defaults to helm/backflow of this repository. Values are merged as
the helm command line merges them: values files in order (maps merged key
by key), then --set and --set-string applied to the result, over the
chart's values.yaml.
"""

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("BACKFLOW_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "backflow")
VENV = os.path.join(CACHE, "helm-venv")
VENV_PYTHON = os.path.join(VENV, "bin", "python")

try:
    import helm_python as helm
except ImportError:
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV) and os.access(VENV_PYTHON, os.X_OK):
        os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])
    sys.stderr.write(
        "helm_render: helm-python-sdk is not installed (%s missing): run scripts/services.sh up "
        "(or scripts/helm-setup.sh)\n" % VENV_PYTHON
    )
    sys.exit(3)


def merge(base, extra):
    """Deep merge of values as helm's command line does: maps merge key by
    key, anything else replaces."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def merge_set(base, parsed):
    """Applies a parsed --set expression to the values so far, as helm's
    strvals.ParseInto does: `a[1].b=x` changes the `b` of the existing
    element 1 of list `a` (elements it does not name are kept)."""
    if isinstance(parsed, dict) and isinstance(base, dict):
        out = dict(base)
        for k, v in parsed.items():
            out[k] = merge_set(out[k], v) if k in out else v
        return out
    if isinstance(parsed, list) and isinstance(base, list):
        out = list(base) + [None] * max(0, len(parsed) - len(base))
        for i, v in enumerate(parsed):
            if v is not None:
                out[i] = merge_set(out[i], v) if out[i] is not None else v
        return out
    return parsed


def user_values(args):
    values = {}
    for path in args.values:
        with open(path, encoding="utf-8") as f:
            values = merge(values, helm.values_from_yaml(f.read()) or {})
    for s in args.set:
        values = merge_set(values, helm.parse_set_string(s))
    for s in args.set_string:
        values = merge_set(values, helm.parse_set_string_values(s))
    return values


# Helm's releaseutil.SplitManifests separator.
SEPARATOR = re.compile(r"(?:^|\s*\n)---\s*")


def render(args):
    values = user_values(args)
    with helm.Chart.load(args.chart) as chart:
        rendered = chart.render(
            values, name=args.release, namespace=args.namespace, is_install=True
        )
    return rendered


def manifests(rendered):
    objects = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt") or os.path.basename(path).startswith("_"):
            continue
        for doc in SEPARATOR.split(rendered[path]):
            if not doc.strip():
                continue
            obj = helm.values_from_yaml(doc)
            if obj:
                objects.append(obj)
    return objects


def main():
    parser = argparse.ArgumentParser(description="Render backflow's Helm chart as JSON.")
    parser.add_argument("command", nargs="?", default="template", choices=["template", "notes", "lint", "version"])
    parser.add_argument("chart", nargs="?", default=os.path.join(ROOT, "helm", "backflow"))
    parser.add_argument("-f", "--values", action="append", default=[], metavar="FILE")
    parser.add_argument("--set", action="append", default=[], metavar="K=V")
    parser.add_argument("--set-string", action="append", default=[], metavar="K=V")
    parser.add_argument("--release", default="backflow")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args()

    try:
        if args.command == "version":
            out = {
                "helm_python_sdk": getattr(helm, "__version__", None),
                "helm_c": helm.helm_c_version(),
                "helm": helm.helm_sdk_version(),
            }
        elif args.command == "lint":
            out = helm.lint(args.chart, user_values(args), strict=True, namespace=args.namespace)
            json.dump(out, sys.stdout, indent=1)
            sys.stdout.write("\n")
            bad = [m for m in out.get("messages", []) if m.get("severity", 0) >= 2]
            return 1 if bad or out.get("errors") else 0
        elif args.command == "notes":
            rendered = render(args)
            out = next((v for k, v in rendered.items() if k.endswith("NOTES.txt")), "")
        else:
            out = manifests(render(args))
    except helm.HelmError as e:
        sys.stderr.write("helm_render: %s\n" % e)
        return 1
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
