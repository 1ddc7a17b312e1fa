#!/usr/bin/env bash
# Runs the project's Python (the virtual environment scripts/setup.sh makes, with numpy, gguf,
# tokenizers, matplotlib and the default model) with the given arguments:
#   bash scripts/python.sh scripts/plot_quality.py ...
# The same lookup as saap::python_interpreter(): $SAAP_PYTHON, else $SAAP_CACHE/venv/bin/python
# (default cache ~/.cache/saap) when setup made it, else python3 from PATH.
set -euo pipefail
python=${SAAP_PYTHON:-${SAAP_CACHE:-$HOME/.cache/saap}/venv/bin/python}
[ -n "${SAAP_PYTHON:-}" ] || [ -x "$python" ] || python=python3
exec "$python" "$@"
