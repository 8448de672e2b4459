"""The worker: one loaded model that scores candidates against its full-precision self.

It loads the model once, computes the full-precision reference once, quantizes each (layer,
option) at most once (a variant cache), and applies a candidate by swapping only the layers whose
option changed since the last candidate. Plain Python and torch: the Ray actor is a thin shell.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Candidate, SearchSpace

from .layers import get_weight, quantizable_modules, set_weight_
from .model_loading import load_model, load_tokenizer
from .quantize import quantize_weight
from .scoring import embedding_distortion, mean_pool, next_token_kl


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker needs, as plain values the driver resolved (and can send anywhere)."""

    model_path: str
    kind: str  # "causal-lm" or "encoder"
    objective: str  # "kl" or "embedding_distortion"
    texts: tuple[str, ...]
    seq_len: int
    batch_size: int = 32
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None


@dataclass(frozen=True)
class EvalOutcome:
    """The result of scoring one candidate; ``objective`` is None when it failed (see ``error``)."""

    objective: float | None
    seconds: float
    error: str | None = None


class Worker:
    def __init__(self, setup: WorkerSetup, space: SearchSpace) -> None:
        if setup.threads:
            torch.set_num_threads(setup.threads)
        self.setup = setup
        self.space = space
        self.device = torch.device(setup.device)
        self.model = load_model(setup.model_path, setup.kind, setup.dtype, setup.device)
        modules = quantizable_modules(self.model)
        self.modules = {layer.name: modules[layer.name] for layer in space.layers}
        self.original = {name: get_weight(m) for name, m in self.modules.items()}
        self.current: dict[str, QuantOption | None] = dict.fromkeys(self.modules)  # None = original
        self.cache: dict[tuple[str, QuantOption], torch.Tensor] = {}
        self.batches = self._tokenize(load_tokenizer(setup.model_path))
        self.reference = self._forward_reference()

    # -- setup --------------------------------------------------------------------------------
    def _tokenize(self, tokenizer) -> list[dict[str, torch.Tensor]]:
        texts, bs = list(self.setup.texts), self.setup.batch_size
        batches = []
        for start in range(0, len(texts), bs):
            enc = tokenizer(texts[start:start + bs], max_length=self.setup.seq_len,
                            truncation=True, padding=True, return_tensors="pt")
            batches.append({k: v.to(self.device) for k, v in enc.items()})
        return batches

    @torch.inference_mode()
    def _forward_reference(self) -> list[torch.Tensor]:
        refs = []
        for batch in self.batches:
            out = self.model(**batch)
            if self.setup.objective == "kl":
                refs.append(torch.log_softmax(out.logits.float(), dim=-1))
            else:
                refs.append(mean_pool(out.last_hidden_state, batch["attention_mask"]))
        return refs

    # -- applying a candidate -----------------------------------------------------------------
    def variant(self, name: str, option: QuantOption) -> torch.Tensor:
        """The weight of layer ``name`` under ``option``, computed on first use and then kept."""
        key = (name, option)
        if key not in self.cache:
            self.cache[key] = quantize_weight(self.original[name], option)
        return self.cache[key]

    def apply_(self, candidate: Candidate) -> int:
        """Point every layer at its variant for ``candidate``; returns how many layers changed."""
        changed = 0
        for name, option in self.space.decode(candidate).items():
            if self.current[name] != option:
                set_weight_(self.modules[name], self.variant(name, option))
                self.current[name] = option
                changed += 1
        return changed

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.cache.values())

    # -- scoring ------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, samples: int | None = None) -> float:
        """The objective of the model as it stands, on the first ``samples`` samples (all: None)."""
        total, count, seen = 0.0, 0.0, 0
        limit = len(self.setup.texts) if samples is None else min(samples, len(self.setup.texts))
        for batch, ref in zip(self.batches, self.reference, strict=True):
            if seen >= limit:
                break
            take = min(limit - seen, batch["input_ids"].shape[0])
            sub = {k: v[:take] for k, v in batch.items()}
            out = self.model(**sub)
            if self.setup.objective == "kl":
                s, n = next_token_kl(ref[:take], out.logits, sub["attention_mask"])
                total, count = total + float(s), count + float(n)
            else:
                emb = mean_pool(out.last_hidden_state, sub["attention_mask"])
                total += float(embedding_distortion(ref[:take], emb).sum())
                count += take
            seen += take
        return total / max(count, 1.0)

    def evaluate(self, candidate: Candidate) -> EvalOutcome:
        """Apply and score ``candidate``; a non-finite score is a failure, never a result."""
        start = time.perf_counter()
        self.apply_(candidate)
        value = self.score(candidate.samples)
        seconds = time.perf_counter() - start
        if not math.isfinite(value):
            return EvalOutcome(None, seconds, f"objective is not finite ({value})")
        return EvalOutcome(value, seconds)
