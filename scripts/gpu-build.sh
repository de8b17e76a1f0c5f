#!/usr/bin/env bash
# The builds of one GPU call, made here (the GPU machine has no Rust toolchain). Each NAME=REV
# is checked out and built; its sleepy goes to gpu-run/sleepy-NAME (gpu-run/sleepy for NAME
# main) and, for the builds named in TESTS_FOR (default main), the test binaries named in
# TESTS to gpu-run/TEST-NAME (as gpu-ab.sh runs them). Then gpu-run/ and a copy
# of ../shared/tools/gpu (gpu-tools/) are packed into gpu-pack/run.tar.xz, under the 64 MiB a
# call carries:
#
#     TESTS="cuda_quant cuda_tune" bash scripts/gpu-build.sh main=main beside=exp/all-beside
#
# and on the GPU machine (run with carry ["gpu-pack"]):
#
#     tar xf gpu-pack/run.tar.xz && VARIANTS="main beside" bash scripts/gpu-ab.sh
#
# The working tree must be clean (revisions are checked out in it, to reuse target/); the
# branch it was on is checked out again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -z "$(git status --porcelain --untracked-files=no)" ] || { echo "gpu-build.sh: the working tree has changes; commit or stash them first" >&2; exit 1; }
start=$(git symbolic-ref --quiet --short HEAD || git rev-parse HEAD)
trap 'git checkout -q "$start"' EXIT
rm -rf gpu-run gpu-pack
mkdir -p gpu-run gpu-pack
for spec in "$@"; do
    name=${spec%%=*} rev=${spec#*=}
    git checkout -q "$rev"
    cargo build --release -q -p sleepy-cli
    dst=gpu-run/sleepy-$name
    [ "$name" = main ] && dst=gpu-run/sleepy
    cp target/release/sleepy "$dst"
    if [ -n "${TESTS:-}" ] && [[ " ${TESTS_FOR:-main} " == *" $name "* ]]; then
        # `cargo test --no-run` names each test binary it built (target/release/deps/NAME-HASH).
        cargo test --release --no-run 2>&1 | grep -oE "target/release/deps/[a-z_]+-[0-9a-f]+" | sort -u | while read -r f; do
            t=$(basename "$f")
            t=${t%-*}
            case " $TESTS " in *" $t "*) cp "$f" "gpu-run/$t-$name" ;; esac
        done
    fi
    echo "$name: $(git rev-parse --short HEAD)"
done
# Compiled kernels an earlier call brought back (gpu-ab.sh's kernels.tgz, put in gpu-cache/):
# builds whose kernel sources are unchanged then skip NVRTC on the GPU machine.
[ -f gpu-cache/kernels.tgz ] && cp gpu-cache/kernels.tgz gpu-run/ && echo "carrying gpu-cache/kernels.tgz"
rm -rf gpu-tools
cp -r ../shared/tools/gpu gpu-tools
tar cJf gpu-pack/run.tar.xz gpu-run gpu-tools
ls -la gpu-pack/run.tar.xz
size=$(stat -c %s gpu-pack/run.tar.xz)
[ "$size" -lt $((60 << 20)) ] || echo "gpu-build.sh: gpu-pack/run.tar.xz is $((size >> 20)) MiB, near or over the 64 MiB a call carries" >&2
