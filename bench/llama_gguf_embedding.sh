#!/usr/bin/env bash
# The token embedding searched through the real CLI on one GPU machine, in one call: trains the
# Llama of bench/train_causal_lm.py --arch llama (untied embedding and LM head, 1,000 steps), then
# `mpsearch run bench/llama_gguf_embedding.yaml` (the embedding and the 63 block layers, GGUF
# block types, 4.75 bits) and the same spec over the blocks only (the embedding unsearched, at the
# checkpoint's 32 bits), the best of each, and the GGUF export of the first with --verify.
# OUT_DIR receives training.json, run-*.txt, best-*.json, export.txt, gguf_types.txt, levels.txt
# and times.txt.
# Usage (from the project root, with mpsearch installed): bench/llama_gguf_embedding.sh OUT_DIR
set -u
out=$1
mkdir -p "$out"
ms() { echo $(( $(date +%s%N) / 1000000 )); }
python bench/train_causal_lm.py --out /tmp/llama --arch llama --steps 1000 --calib-chars 400 \
    > "$out/training.json" 2> "$out/train.err"
python - <<'PY'
import yaml
s = yaml.safe_load(open("bench/llama_gguf_embedding.yaml"))
s["study"], s["storage"]["url"] = "llama-gguf-blocks", "sqlite:////tmp/llama-gguf-blocks.db"
s["space"]["layers"][0]["match"] = r"model\.layers\.\d+\."
yaml.safe_dump(s, open("/tmp/llama_gguf_blocks.yaml", "w"))
PY
for spec in bench/llama_gguf_embedding.yaml /tmp/llama_gguf_blocks.yaml; do
    name=$(basename "$spec" .yaml) start=$(ms)
    mpsearch run "$spec" > "$out/run-$name.txt" 2>&1
    echo "mpsearch run $spec: $(( $(ms) - start )) ms" >> "$out/times.txt"
done
for study in embedding blocks; do
    mpsearch best --study "llama-gguf-$study" --db "sqlite:////tmp/llama-gguf-$study.db" --json \
        > "$out/best-$study.json" 2>&1
done
start=$(ms)
mpsearch export --study llama-gguf-embedding --db sqlite:////tmp/llama-gguf-embedding.db \
    --format gguf --out /tmp/llama-embedding.gguf --verify > "$out/export.txt" 2>&1
echo "mpsearch export --format gguf --verify: $(( $(ms) - start )) ms" >> "$out/times.txt"
python - > "$out/gguf_types.txt" 2>&1 <<'PY'
import gguf
reader = gguf.GGUFReader("/tmp/llama-embedding.gguf")
print({t.name: t.tensor_type.name for t in reader.tensors})
PY
mpsearch levels --show bench/llama_gguf_embedding.yaml > "$out/levels.txt" 2>&1
