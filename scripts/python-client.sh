#!/usr/bin/env bash
# Creates (once) a virtualenv with the official Python client, aerospike==19.3.0, under
# target/py-venv, and prints the path of its python. Used by the end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import aerospike' 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'aerospike==19.3.0' >&2
fi
echo "$PWD/$venv/bin/python"
