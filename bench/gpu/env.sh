# Sourced by the GPU scripts, from the repository root with P set to the
# pack (tests/gpu/pack.sh): puts the toolkit's cuBLAS on LD_LIBRARY_PATH
# and defines the benchmark models made on the spot, once each, so that
# every script times the same weights (written under another name and
# renamed, so that a run killed mid-write leaves no truncated model).

for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$d/libcublas.so.13" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}" && break
done

# m3_model PATH [LAYERS [CTX]]: the M3-shaped MSA model (mkmodel preset
# m3-1b, random bf16, seed 11; 16 layers, 1M context), unless PATH exists.
m3_model() {
    [ -f "$1" ] || { "$P/bin/mkmodel" --out "$1.part" --preset m3-1b --layers "${2:-16}" --ctx "${3:-1048576}" \
        --seed 11 >/dev/null && mv "$1.part" "$1"; }
}

# llama_model PATH: the 0.5B Llama (8 layers, embd 2048, 16/4 heads of 128,
# ff 5632, vocab 32000, bf16, seed 7), unless PATH exists.
llama_model() {
    [ -f "$1" ] || { "$P/bin/mkmodel" --out "$1.part" --layers 8 --embd 2048 --heads 16 --kv-heads 4 \
        --head-dim 128 --ff 5632 --vocab 32000 --type bf16 --seed 7 >/dev/null && mv "$1.part" "$1"; }
}

# qwen3moe_model PATH [LAYERS]: Qwen3-30B-A3B's layer shape (embd 2048, 32/4
# heads of 128, 128 experts of width 768, 8 a token; vocab 32000; bf16,
# seed 23; LAYERS default 4), unless PATH exists.
qwen3moe_model() {
    [ -f "$1" ] || { "$P/bin/mkmodel" --out "$1.part" --arch qwen3moe --layers "${2:-4}" --embd 2048 \
        --heads 32 --kv-heads 4 --head-dim 128 --experts 128 --experts-used 8 --expert-ff 768 --vocab 32000 \
        --ctx 8192 --type bf16 --seed 23 >/dev/null && mv "$1.part" "$1"; }
}
