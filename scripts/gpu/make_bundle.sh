#!/usr/bin/env bash
# Builds swiftkv with the CUDA backend for the GPU machine and packs what it needs to run there into
# .devbundle/bundle.tar.xz (binaries, the non-system shared libraries they load, the Python checks).
# The GPU machine has the CUDA driver, cuBLASLt (via PyTorch's nvidia-* wheels), PyTorch and
# transformers, but none of our Debian libraries and no network; CPU code is built for x86-64-v3.
# Usage: scripts/gpu/make_bundle.sh   (then carry .devbundle to the GPU machine; see run_checks.sh)
#        SLIM=1 scripts/gpu/make_bundle.sh   swiftkv and its libraries only (about 11 MB instead of 20 MB)
#        BASELINE=REV scripts/gpu/make_bundle.sh   an older commit's swiftkv (SLIM) into
#            .devbundle/baseline.tar.xz, for run_checks.sh's `sidebyside` phase (built in a git worktree)
# The device tool copies the working tree with what it carries, 64 MiB in all; weights/ alone is about
# 36 MB of it, so for calls that carry the default GGUF in parts move weights/ out of the tree for the
# GPU session (and back before committing), and split the GGUF in parts of about 33 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${BASELINE:-}" ]; then
  wt=${BASELINE_TREE:-/tmp/swiftkv-baseline}
  [ -d "$wt" ] || git worktree add -f "$wt" "$BASELINE" >/dev/null
  git -C "$wt" checkout -q --detach "$BASELINE"
  (cd "$wt" && SLIM=1 BASELINE= scripts/gpu/make_bundle.sh)
  mkdir -p .devbundle
  cp "$wt/.devbundle/bundle.tar.xz" .devbundle/baseline.tar.xz
  ls -la .devbundle/baseline.tar.xz
  exit 0
fi
B=build/gpu
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSWIFTKV_CUDA=ON -DSWIFTKV_NATIVE=OFF \
  -DSWIFTKV_CPU_ARCH=x86-64-v3 -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache >/dev/null
targets=(swiftkv test_cuda_ops test_cuda_train_ops test_cuda_forward test_backend test_train_ops attention_selftest gemv_selftest)
[ "${SLIM:-0}" = 1 ] && targets=(swiftkv)
ninja -C "$B" -j"${JOBS:-2}" "${targets[@]}"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for t in "${targets[@]}"; do
  find "$B/tools" "$B/tests" -maxdepth 2 -type f -name "$t" -perm -u+x -exec cp {} "$stage/bin/" \;
done
# Shared libraries from Debian that the GPU machine's image lacks (libc, libstdc++ and CUDA stay).
for bin in "$stage"/bin/*; do
  ldd "$bin" | awk '/=> \//{print $3}'
done | sort -u | grep -E 'openblas|hwy|pcre2|libfmt|gfortran|quadmath|gtest|gmock|libz\.' | while read -r lib; do
  cp -L "$lib" "$stage/lib/"
done
mkdir -p .devbundle
tar -C "$stage" -cJf .devbundle/bundle.tar.xz .
ls -la .devbundle/bundle.tar.xz
