#!/bin/bash
# Builds the CUDA engine here (-Dcuda=enabled, in build-cuda/) and packs what
# tests/gpu/run.sh needs on a GPU machine into build-cuda/gpu-pack: the
# check and bench programs, mkmodel, sparsed with the shared libraries it
# needs beyond glibc and CUDA, the test models and the reference ids.  The
# GPU machine then needs no compiler or -dev packages; carry the folder.
set -eu -o pipefail
cd "$(dirname "$0")/../.."
B=build-cuda
P=$B/gpu-pack
[ -f $B/build.ninja ] || meson setup $B -Dcuda=enabled
# meson records no header dependencies for nvcc: rebuild the CUDA objects so
# that an edited .cuh is never packed stale
rm -f $B/engine/cuda/libsparsed_cuda.a.p/*.o
ninja -C $B sparsed tests/gpu/gpu_check bench/gpu_model_bench tools/mkmodel
rm -rf $P
mkdir -p $P/bin $P/lib $P/models $P/data
cp $B/tests/gpu/gpu_check $B/bench/gpu_model_bench $B/tools/mkmodel $B/sparsed $P/bin/
# sparsed's libraries that a bare CUDA image may lack (not glibc, not CUDA)
ldd $B/sparsed | awk '$3 ~ /^\// {print $3}' |
    grep -Ev '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcublas|libcublasLt)\.so' |
    while read -r lib; do cp -L "$lib" $P/lib/; done
cp models/stories260K.gguf $P/models/
cp tests/data/stories260K-greedy.txt $P/data/
MK=$P/bin/mkmodel
# a Llama with head dim 128 (the tuned attention kernels' shape), Q4_K weights
$MK --out $P/models/llama-q4k.gguf --layers 3 --embd 512 --heads 4 --kv-heads 2 --head-dim 128 \
    --ff 1024 --vocab 2048 --type q4_k --seed 1 >/dev/null
# Qwen-like: NEOX pairs, partial rotary, QK norm, Q8_0
$MK --out $P/models/qwen-q8.gguf --layers 2 --embd 256 --heads 8 --kv-heads 2 --head-dim 64 \
    --ff 512 --vocab 1024 --type q8_0 --qk-norm --neox --rope-dim 32 --seed 2 >/dev/null
# MSA: M3-style indexer, first layer dense, blocks of 16, top 4 + 1 local
$MK --out $P/models/m3-tiny.gguf --preset m3-tiny --seed 3 >/dev/null
# MSA in the tuned sparse kernels' shape: 4 KV heads of 128, index heads
# 4 x 128, blocks of 128, top 4 + 1 local, first layer dense
$MK --out $P/models/m3-128.gguf --preset m3-1b --layers 3 --embd 256 --head-dim 128 --ff 512 --vocab 2048 \
    --ctx 8192 --indexer-top-k 4 --dense-layers 1 --type q8_0 --seed 4 >/dev/null
du -sh $P
