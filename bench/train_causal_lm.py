"""Train a small GPT-2 on the Python standard library's sources: a causal LM anyone can rebuild.

No causal LM can be downloaded where mpsearch's benchmarks run, and a model with random weights
has nothing for quantization to damage. This script makes a real one offline, from the ``.py``
files of the running Python's standard library (tests, site-packages and ``idlelib`` left out):

1. split the files by a hash of their name: 90 % train, 10 % held out (never trained on);
2. a byte-level BPE tokenizer (``tokenizers``, ``--vocab`` entries) fitted on the training files;
3. GPT-2 (``--layers`` × ``--width``, 9.2M parameters at the defaults: 36 searched layers) trained with AdamW
   in bfloat16 autocast for ``--steps`` steps, or for ``--seconds`` of wall clock without
   ``--steps`` (the learning rate follows the step count or the clock: warmup, then cosine to a
   tenth), sequences of ``--seq-len`` tokens. A fixed step count gives the same model however
   busy the GPU is; the clock does not;
4. saved in Hugging Face format (float32, loadable by ``AutoModelForCausalLM``) with its
   tokenizer, plus ``calib.jsonl``: chunks of the held-out files (one JSON object per line,
   ``text``), the calibration and held-out samples of ``bench/search_quality.py --model OUT``.

    python bench/train_causal_lm.py --out /tmp/gpt2-stdlib                  # H200: ≈ 3 min
    python bench/train_causal_lm.py --out /tmp/t --seconds 5 --width 32 --layers 1 --max-files 40
    python bench/train_causal_lm.py --out /tmp/llama --arch llama --steps 1000   # untied embedding
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}


def stdlib_files() -> list[Path]:
    """The standard library's .py files, sorted by path (the same list on every run)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP and not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def held_out(path: Path) -> bool:
    """One file in ten, by a hash of its name: never trained on."""
    return hashlib.sha256(path.name.encode()).digest()[0] < 26


def chunks(text: str, chars: int) -> list[str]:
    """Consecutive pieces of about ``chars`` characters, cut at line ends."""
    out, cur = [], ""
    for line in text.splitlines(keepends=True):
        cur += line
        if len(cur) >= chars:
            out.append(cur)
            cur = ""
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=120.0,
                    help="training time (wall clock), where --steps is not given")
    ap.add_argument("--steps", type=int, default=None,
                    help="optimizer steps (the schedule follows them; --seconds is ignored)")
    ap.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2",
                    help="llama: a Llama (RMSNorm, rotary positions, SwiGLU of 4 × width) whose "
                         "embedding and LM head are untied, so the embedding can be searched")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--width", type=int, default=256, help="a multiple of 128: g128 groups")
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--max-files", type=int, default=None, help="the first N files only (smoke)")
    ap.add_argument("--calib-chars", type=int, default=600,
                    help="characters per calibration sample (≈ 128+ tokens of code)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.seconds <= 0 or (args.steps is not None and args.steps < 1) or \
            args.width % args.heads:
        sys.exit("train_causal_lm: --seconds and --steps must be > 0 and --width a multiple of "
                 "--heads")

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    files = stdlib_files()[: args.max_files]
    texts = {p: p.read_text(encoding="utf-8", errors="replace") for p in files}
    train = [t for p, t in texts.items() if not held_out(p)]
    held = [t for p, t in texts.items() if held_out(p)]
    if not train or not held:
        sys.exit(f"train_causal_lm: {len(files)} files give no training or no held-out file")

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(train, trainers.BpeTrainer(
        vocab_size=args.vocab, special_tokens=[eos], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos,
                                        pad_token=eos, model_max_length=args.seq_len)
    eos_id = tok.token_to_id(eos)

    def stream(docs: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for enc in tok.encode_batch(docs):
            ids += enc.ids + [eos_id]
        return torch.tensor(ids, dtype=torch.long)

    train_ids, held_ids = stream(train), stream(held)
    tokenized = time.perf_counter() - start

    device = torch.device(args.device if args.device != "cuda" or torch.cuda.is_available()
                          else "cpu")
    model: GPT2LMHeadModel | LlamaForCausalLM
    if args.arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=tok.get_vocab_size(), hidden_size=args.width,
            intermediate_size=4 * args.width, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, num_key_value_heads=args.heads,
            max_position_embeddings=args.seq_len, bos_token_id=eos_id, eos_token_id=eos_id,
            pad_token_id=eos_id, tie_word_embeddings=False)).to(device)
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=tok.get_vocab_size(), n_positions=args.seq_len, n_embd=args.width,
            n_layer=args.layers, n_head=args.heads, bos_token_id=eos_id, eos_token_id=eos_id,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).to(device)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(args.seed)
    L = args.seq_len

    def batch(ids: torch.Tensor, n: int) -> torch.Tensor:
        at = torch.randint(0, len(ids) - L - 1, (n,), generator=gen)
        return torch.stack([ids[i:i + L] for i in at.tolist()]).to(device, non_blocking=True)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    t0, step, loss_ema = time.perf_counter(), 0, None
    model.train()
    def progress() -> float:  # fraction of the training done: by steps, else by the clock
        if args.steps is not None:
            return step / args.steps
        return (time.perf_counter() - t0) / args.seconds

    while (frac := progress()) < 1.0:
        warm = min(1.0, step / 100)
        lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        x = batch(train_ids, args.batch)
        with autocast:
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            value = float(loss)
            loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
    trained = time.perf_counter() - t0

    model.eval()
    with torch.no_grad(), autocast:
        held_loss = sum(float(model(input_ids=(x := batch(held_ids, args.batch)), labels=x).loss)
                        for _ in range(8)) / 8
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.float().save_pretrained(out)
    tokenizer.save_pretrained(out)
    samples = [c for t in held for c in chunks(t, args.calib_chars)]
    import random
    random.Random(args.seed).shuffle(samples)  # mix the held-out files, so any slice reads alike
    with (out / "calib.jsonl").open("w") as f:
        for text in samples:
            f.write(json.dumps({"text": text}) + "\n")
    summary = {"parameters": params, "train_files": len(train), "heldout_files": len(held),
               "train_tokens": len(train_ids), "heldout_tokens": len(held_ids),
               "steps": step, "tokens_seen": step * args.batch * L,
               "train_loss_ema": loss_ema, "heldout_loss": held_loss,
               "calibration_samples": len(samples), "seconds_tokenize": tokenized,
               "seconds_train": trained, "seconds_total": time.perf_counter() - start,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "python": sys.version.split()[0], "args": vars(args)}
    (out / "training.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
