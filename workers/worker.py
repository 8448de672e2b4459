"""The worker: one loaded model that scores candidates against its full-precision self.

It loads the model once (and refuses to score one whose weights are not finite), computes the
full-precision reference once, compresses each (layer, option) at most once (the variant cache,
:mod:`.variant_cache`: on the device while it fits, else pinned host memory), and applies a
candidate by swapping only the layers whose option changed since the last candidate, so one
evaluation costs about one forward pass plus the objective.

Each option is compressed by its format's handler (:mod:`.registry`). Handlers that need statistics
of a layer's inputs (GPTQ: the Hessian H = 2XᵀX/n; Wanda: the column norms ‖X_j‖) say so; they are
gathered once, on first need, by forward hooks during one pass of the full-precision model over
the calibration batches (padding excluded); one Hessian per layer serves every GPTQ level of that
layer, and layers that read the same input tensor (q/k/v, gate/up) share one. Variants that need
such statistics or are expensive are read from and written to the level database
(:mod:`.level_db`) when the setup names one, and built a whole level at a time by batched GPTQ
(:mod:`.level_build`).

Multi-fidelity: ``Candidate.samples = N`` scores on the first N calibration samples, the same N for
every candidate (common random numbers), so cheap screening compares candidates on equal terms.

Plain Python and torch: the Ray actor (:mod:`.actor`) is a thin shell.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.space import Candidate, SearchSpace

from . import level_codec
from .activations import quantize_inputs_, quantize_outputs_
from .errors import WorkerError
from .gptq import HessianAccumulator, LookupAccumulator, hessian_error, lookup_error
from .layers import ExpertSlice, get_weight, is_embedding, quantizable_targets, set_weight_
from .level_build import load_stored_, statistics_reserve
from .level_db import LevelDatabase, stored_option
from .model_loading import load_model, load_tokenizer
from .moe import fused_expert_inputs, routing_counts, routing_fractions
from .objectives import make_objective, slice_reference
from .placement import Placement
from .registry import ACT_NORM, HESSIAN, Encoded, LayerInputs, handler_for, quantize_weight
from .sharding import ShardedVariantCache, sharded_cache, spread_model
from .variant_cache import VariantCache

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker needs, as plain values the driver resolved (and can send anywhere)."""

    model_path: str
    kind: str  # "causal-lm" or "encoder"
    # "kl", "embedding_distortion", or a user objective (see .objective_registry)
    objective: str
    texts: tuple[str, ...]
    seq_len: int
    batch_size: int = 32
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    # KL on the teacher's top-k tokens only (k/V of the reference's memory); None: full vocabulary.
    kl_top_k: int | None = None
    # Variant bytes kept on the device; the rest goes to pinned host memory. None: as many as fit
    # (free device memory after the reference, less twice the forward pass's peak and 1 GiB).
    cache_device_bytes: int | None = None
    # GPTQ's dampening λ = percdamp · mean(diag H) and lazy-batch width (the reference's defaults).
    gptq_percdamp: float = 0.01
    gptq_block_size: int = 128
    # More than one: the model is spread over these devices, a pipeline of its blocks with each
    # layer's variants on its block's device (.sharding, .placement); empty: the one ``device``.
    devices: tuple[str, ...] = ()
    # Bytes each of ``devices`` may hold; None: its free memory (tests inject small budgets).
    device_budgets: tuple[int, ...] | None = None
    # Random weights from the model's config, created on their devices (benchmarks of models
    # too big to save); False: the weights of ``model_path``.
    random_weights: bool = False
    # The level set (one model + calibration) of the level database, see .level_db; None: none.
    level_db: str | None = None
    # Who writes to the level database, for its build log (the actor's label).
    label: str = ""
    # Whether the job computes proxy errors (the Hessian kind needs every layer's Hessian on
    # this worker), and which: "hessian" or "fisher" (see .profile).
    proxies: bool = False
    proxy_kind: str = "hessian"
    # Whether they are weighted by where the calibration tokens are routed (MoE, .moe).
    routing: bool = False
    # The driver runs the setup phases one by one (mpsearch.cluster.warmup): the actor loads
    # nothing until asked.
    phased: bool = False
    # Batched GPTQ's memory per chunk: float32 weights, and inverse-Hessian factors (the down
    # projections of an 8B model's 32 blocks take 26 GiB: one chunk on an H200).
    gptq_max_weight_bytes: int = 16 << 30
    gptq_max_factor_bytes: int = 28 << 30


@dataclass(frozen=True)
class EvalOutcome:
    """The result of scoring one candidate; ``objective`` is None when it failed (see ``error``).

    ``extra`` holds further numbers of the same evaluation (``perplexity`` for causal LMs).
    """

    objective: float | None
    seconds: float
    error: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


def level_database(setup: WorkerSetup) -> LevelDatabase | None:
    """The level set ``setup`` names, keyed by the GPTQ parameters that change its variants."""
    if not setup.level_db:
        return None
    return LevelDatabase(setup.level_db, {"percdamp": setup.gptq_percdamp,
                                          "block_size": setup.gptq_block_size}, setup.label)


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters holding NaN or Inf."""
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


class Worker:
    def __init__(self, setup: WorkerSetup, space: SearchSpace, *, model: nn.Module | None = None,
                 batches: list[Batch] | None = None, defer_reference: bool = False) -> None:
        """Load ``setup.model_path`` (or use ``model``) and tokenize ``setup.texts`` (or use
        ``batches``: dicts of ``input_ids``/``attention_mask`` on the device, for benchmarks).
        ``defer_reference``: leave the full-precision reference to :meth:`compute_reference`
        (a setup phase of its own)."""
        if setup.threads:
            torch.set_num_threads(setup.threads)
        self.setup = setup
        self.space = space
        spread = len(setup.devices) > 1 or setup.random_weights
        self.device = torch.device(setup.devices[0] if spread and setup.devices else setup.device)
        self.objective = make_objective(setup.objective, setup.kl_top_k)
        self.placement: Placement | None = None
        if spread:  # raises PlacementError, in one line, when it cannot fit
            self.model, self.placement = spread_model(model, space, setup,
                                                      setup.devices or (setup.device,))
        else:
            self.model = model if model is not None else load_model(
                setup.model_path, setup.kind, setup.dtype, setup.device)
        bad = non_finite_parameters(self.model)
        # A model with NaN/Inf weights fails every trial with this reason (never a best result).
        self.weight_error = (f"model weights are not finite in {len(bad)} tensors "
                             f"(first: {bad[0]})") if bad else None
        modules = quantizable_targets(self.model)
        self.modules = {layer.name: modules[layer.name] for layer in space.layers}
        # embeddings: their inputs are token ids (statistics: row counts, see gptq.LookupAccumulator)
        self.lookups = {name for name, m in self.modules.items() if is_embedding(m)}
        # a fused expert's variant is copied into its slice: its original is kept apart
        self.original = {name: get_weight(m).clone() if isinstance(m, ExpertSlice)
                         else get_weight(m) for name, m in self.modules.items()}
        self.current: dict[str, QuantOption | None] = dict.fromkeys(self.modules)  # None = original
        self.input_quant: dict[str, RemovableHandle] = {}  # layers whose inputs are quantized
        # attention layers whose KV-cache precision is searched: their key and value projections
        self.kv_projections = {a.name: tuple(self.model.get_submodule(f"{a.name}.{p}")
                                             for p in ("k_proj", "v_proj"))
                               for gene in space.genes for a in gene.kv}
        self.kv_current: dict[str, QuantOption | None] = dict.fromkeys(self.kv_projections)
        self.kv_quant: dict[str, list[RemovableHandle]] = {}
        self.batches = batches if batches is not None else self._tokenize(
            load_tokenizer(setup.model_path))
        self.samples = sum(b["input_ids"].shape[0] for b in self.batches)
        self._peak_activation_bytes = 0
        self.input_stats: dict[str, HessianAccumulator | LookupAccumulator] = {}
        self.levels = level_database(setup)
        # (layer, option label) of every stored-kind variant this worker computed, in order
        self.computed: list[tuple[str, str]] = []
        self.reference: list[Any] = []
        self.ready = False  # the reference is computed and the variant cache sized
        if not defer_reference:
            self.compute_reference()

    # -- setup --------------------------------------------------------------------------------
    def _tokenize(self, tokenizer) -> list[Batch]:
        texts, bs = list(self.setup.texts), self.setup.batch_size
        batches = []
        for start in range(0, len(texts), bs):
            enc = tokenizer(texts[start:start + bs], max_length=self.setup.seq_len,
                            truncation=True, padding=True, return_tensors="pt")
            batches.append({k: v.to(self.device) for k, v in enc.items()})
        return batches

    def compute_reference(self) -> None:
        """The full-precision reference of every calibration batch; sizes the variant cache."""
        self.reference = self._forward_reference()
        self.cache: VariantCache | ShardedVariantCache = (
            VariantCache(self.device, self._device_cap()) if self.placement is None
            else sharded_cache(self.model, self.placement, list(self.modules),
                               self.setup.cache_device_bytes))
        self.ready = True

    @torch.inference_mode()
    def _forward_reference(self) -> list[Any]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        refs = []
        for batch in self.batches:
            refs.append(self.objective.reference(self.model(**batch), batch))
        if cuda:
            self._peak_activation_bytes = (torch.cuda.max_memory_allocated(self.device)
                                           - torch.cuda.memory_allocated(self.device))
        return refs

    def _device_cap(self) -> int | None:
        if self.setup.cache_device_bytes is not None:
            return self.setup.cache_device_bytes
        if self.device.type != "cuda":
            return None  # CPU: the device is the host
        free, _total = torch.cuda.mem_get_info(self.device)
        return max(free - 2 * self._peak_activation_bytes - (1 << 30) - statistics_reserve(self),
                   0)

    # -- layer input statistics (GPTQ Hessians, Wanda norms) ------------------------------------
    @torch.inference_mode()
    def gather_statistics(self, names: Iterable[str] | None = None, hessians: bool = True) -> None:
        """One full-precision pass over the calibration batches with hooks on layers ``names``
        (all searched layers: None). Layers called one after the other on the same input tensor
        (q/k/v, gate/up) share one accumulator, hence one Hessian."""
        self.restore_()
        wanted = list(self.modules if names is None else names)
        stats: dict[str, HessianAccumulator | LookupAccumulator] = {}
        mask: dict[torch.device, torch.Tensor] = {}  # the batch's, copied once to each device
        last: dict[str, Any] = {}  # the previous hook's input and layer (kept alive: `is` is safe)

        def mask_on(device: torch.device) -> torch.Tensor:
            m = mask.get(device)
            if m is None:
                m = mask[device] = mask[self.device].to(device)
            return m

        def lookup_hook_for(name: str):
            def record(module: nn.Module, args: tuple, _output: Any) -> None:
                ids = args[0]
                if name not in stats:
                    rows, cols = self.original[name].shape
                    stats[name] = LookupAccumulator(rows, cols, ids.device, hessians)
                m = mask_on(ids.device)
                if ids.dim() == m.dim() and ids.shape != m.shape:
                    ids = ids.expand(m.shape)  # position ids, one row for the whole batch
                stats[name].add(ids[m] if ids.shape == m.shape else ids)
            return record

        def hook_for(name: str):
            def record(_module: nn.Module, args: tuple, _output: Any) -> None:
                x = args[0]
                if name not in stats:  # first batch: share with the previous layer's input?
                    prev = last.get("x")
                    stats[name] = (stats[last["name"]] if prev is not None and x is prev
                                   else HessianAccumulator(x.shape[-1], x.device, hessians))
                    owner = stats[name]
                    shared = prev is not None and x is prev
                else:
                    owner, shared = stats[name], x is last.get("x")
                last["x"], last["name"] = x, name
                if shared:
                    return  # the layer before added this very input already
                m = mask_on(x.device)
                if x.shape[:-1] == m.shape:
                    x = x[m]  # padding tokens are not calibration data
                owner.add(x)
            return record

        def record_expert(name: str, x: torch.Tensor) -> None:
            if name not in stats:
                stats[name] = HessianAccumulator(x.shape[-1], x.device, hessians)
            stats[name].add(x)

        handles = []
        slices = {}
        for n in wanted:
            target = self.modules[n]
            if isinstance(target, ExpertSlice):
                slices[n] = target
            else:
                hook = lookup_hook_for(n) if n in self.lookups else hook_for(n)
                handles.append(target.register_forward_hook(hook))
        try:
            with fused_expert_inputs(slices, record_expert):
                for batch in self.batches:
                    mask.clear()
                    mask[self.device] = batch["attention_mask"].bool()
                    last.clear()
                    self.model(**batch)
        finally:
            for h in handles:
                h.remove()
            last.clear()
        self.input_stats.update(stats)

    def hessian(self, name: str) -> torch.Tensor:
        """H = 2XᵀX/n of layer ``name``'s calibration inputs (gathered on first use, for every
        layer without one). Layers sharing their input return the same tensor object."""
        stats = self.input_stats.get(name)
        if stats is None or stats.H is None:
            self.gather_statistics([n for n, st in self.modules.items()
                                    if n not in self.input_stats
                                    or self.input_stats[n].H is None])
        H = self._stats(name).H
        assert H is not None
        return H

    def output_error(self, name: str, W: torch.Tensor, W_hat: torch.Tensor) -> float:
        """Layer ``name``'s own output error per calibration row under the weight ``W_hat``:
        tr((W − Ŵ) H (W − Ŵ)ᵀ) for a linear layer, Σ_r w_r ‖W_r − Ŵ_r‖² for an embedding, each
        row weighted by how often the calibration tokens look it up."""
        if name in self.lookups:
            self.hessian(name)  # gathered on first use, as a linear layer's Hessian
            stats = self._stats(name)
            assert isinstance(stats, LookupAccumulator)
            return lookup_error(W, W_hat, stats.row_weights)
        return hessian_error(W, W_hat, self.hessian(name))

    def _stats(self, name: str) -> HessianAccumulator | LookupAccumulator:
        stats = self.input_stats.get(name)
        if stats is None:  # a routed expert no calibration token reached, or a fused experts
            # module whose eager loop does not apply its slices with F.linear (workers/moe.py)
            raise WorkerError(f"layer {name}: no calibration input reached it (an expert no "
                              "token was routed to, or a fused experts layout whose inputs "
                              "mpsearch cannot see); give it an option without GPTQ or Wanda")
        return stats

    def release_statistics(self) -> None:
        """Free the Hessians (after the level database and the proxies are built); the variant
        cache may then use the device memory they held."""
        had = bool(self.input_stats)
        self.input_stats.clear()
        if self.device.type == "cuda" and had:
            torch.cuda.empty_cache()
            cache = self.cache
            if self.setup.cache_device_bytes is None and isinstance(cache, VariantCache):
                free, _total = torch.cuda.mem_get_info(self.device)
                room = free - 2 * self._peak_activation_bytes - (1 << 30)
                cache.device_cap_bytes = cache.bytes()["device"] + max(room, 0)

    def act_norm(self, name: str) -> torch.Tensor:
        """‖X_j‖₂ per input column of layer ``name`` (Wanda's activation norms)."""
        if name not in self.input_stats:
            self.gather_statistics([n for n in self.modules if n not in self.input_stats],
                                   hessians=False)
        return self._stats(name).act_norm

    def routing(self) -> dict[str, float]:
        """Searched layer → the fraction of calibration tokens routed to its expert (routed
        experts only; see :mod:`.moe`), on the full-precision model."""
        self.restore_()
        slices = {n: m for n, m in self.modules.items() if isinstance(m, ExpertSlice)}
        layers = {n: m for n, m in self.modules.items() if not isinstance(m, ExpertSlice)}
        counts, tokens = routing_counts(self.model, slices, layers, self.batches)
        return routing_fractions(counts, tokens, list(self.modules))

    # -- variants -----------------------------------------------------------------------------
    def layer_inputs(self, name: str, option: QuantOption) -> LayerInputs:
        """The statistics of layer ``name``'s inputs that ``option``'s handler asks for."""
        needs = handler_for(option).statistics(option)
        if needs and not self.batches:
            raise WorkerError(f"layer {name} uses {option.label}, which needs calibration "
                              "inputs, and there are no calibration samples")
        return LayerInputs(hessian=self.hessian(name) if HESSIAN in needs else None,
                           act_norm=self.act_norm(name) if ACT_NORM in needs else None,
                           gptq_percdamp=self.setup.gptq_percdamp,
                           gptq_block_size=self.setup.gptq_block_size)

    def _compress(self, name: str, option: QuantOption) -> torch.Tensor:
        return quantize_weight(self.original[name], option, inputs=self.layer_inputs(name, option))

    def _encode(self, name: str, option: QuantOption) -> Encoded:
        """The stored parts of layer ``name`` under ``option`` (what the level database keeps)."""
        return handler_for(option).encode(self.original[name], option,
                                          self.layer_inputs(name, option))

    def variant(self, name: str, option: QuantOption) -> torch.Tensor:
        """The weight of layer ``name`` under ``option`` (device or host), computed once.
        A stored-kind variant is read from the level database when it holds it, else encoded
        and decoded (the very weight its file will decode to) and queued for the database."""
        key = (name, option)
        if key not in self.cache:
            stored = stored_option(option)
            w = self.levels.load(name, option, self.original[name].device) \
                if stored and self.levels is not None else None
            if w is not None:
                self.cache.put(key, w.contiguous())
            else:
                with torch.inference_mode():
                    enc = self._encode(name, option) if stored else None
                    w = self._compress(name, option) if enc is None else \
                        level_codec.dequantize(enc, self.original[name].dtype)
                self.keep_variant(name, option, w, enc)
        return self.cache.get(key)

    def encoded(self, name: str, option: QuantOption) -> Encoded:
        """The stored parts (codes, scales, zero points, mask) of layer ``name`` under ``option``,
        the ones its scored weight decodes from: read from the level database when it holds
        them (an export after a study recomputes no GPTQ), else encoded now."""
        if self.levels is not None and stored_option(option):
            found = self.levels.load_parts(name, option, self.original[name].device)
            if found is not None and isinstance(found[0], Encoded):
                return found[0]
        with torch.inference_mode():
            return self._encode(name, option)

    def keep_variant(self, name: str, option: QuantOption, w: torch.Tensor,
                     enc: Encoded | None = None) -> None:
        """Cache a variant this worker computed, ``w`` (``enc``'s decode when given), and queue
        ``enc`` (the format's parts; without it, ``w``) for the level database."""
        if not bool(torch.isfinite(w).all()):
            raise WorkerError(f"layer {name} under {option.label}: the compressed weight is "
                              "not finite")
        w = w.contiguous()
        self.cache.put((name, option), w)
        if stored_option(option):
            self.computed.append((name, option.label))
            if self.levels is not None:
                self.levels.save(name, option, enc if enc is not None else w, w.dtype)

    def share_variants(self, source: Worker) -> None:
        """Take compressed weights from ``source`` (same model and space) instead of computing
        them: GPTQ and Wanda variants then stay calibrated on ``source``'s samples while this
        worker scores on its own (held-out ones, say)."""
        self.cache = source.cache
        self._compress = source._compress  # type: ignore[method-assign]
        self._encode = source._encode  # type: ignore[method-assign]

    def warm_cache(self) -> None:
        """Compress every (layer, option) of the space now (benchmarks, profiles); what the
        level database holds is read in parallel threads."""
        if self.levels is not None:
            load_stored_(self, [(layer.name, option) for gene in self.space.genes
                                for layer in gene.layers for option in gene.options])
        for gene in self.space.genes:
            for layer in gene.layers:
                for option in gene.options:
                    self.variant(layer.name, option)

    def cache_bytes(self) -> int:
        return sum(self.cache.bytes().values())

    def cache_split(self) -> dict[str, int]:
        """Bytes of the variant cache on the device (slots included) and in host memory."""
        return self.cache.bytes()

    # -- applying a candidate -----------------------------------------------------------------
    def set_layer_(self, name: str, option: QuantOption | None) -> bool:
        """Point layer ``name`` at its variant for ``option`` (None: the original); True if changed."""
        if self.current[name] == option:
            return False
        target = self.modules[name]
        if option is None:
            set_weight_(target, self.original[name])
        elif isinstance(target, ExpertSlice):  # copied into the slice: read the cached tensor
            set_weight_(target, self.variant(name, option))
        else:
            self.variant(name, option)
            set_weight_(target, self.cache.fetch((name, option), target))
        if name in self.input_quant:
            self.input_quant.pop(name).remove()
        if option is not None and option.activations:  # W8A8: inputs quantized per token
            if name in self.lookups:
                raise WorkerError(f"layer {name}: option {option.label} quantizes a layer's "
                                  "inputs, and an embedding's inputs are token ids")
            if not isinstance(target, nn.Module):
                raise WorkerError(f"layer {name}: option {option.label} quantizes a layer's "
                                  "inputs, and a fused expert slice has none of its own")
            self.input_quant[name] = quantize_inputs_(target, option.activations)
        self.current[name] = option
        return True

    def set_kv_(self, attention: str, option: QuantOption | None) -> bool:
        """Quantize ``attention``'s KV cache as ``option`` says (None or fp16: the model's own
        precision): its k_proj and v_proj outputs, per tensor; True if changed."""
        if self.kv_current[attention] == option:
            return False
        for handle in self.kv_quant.pop(attention, ()):
            handle.remove()
        if option is not None and option.format != "fp16":
            self.kv_quant[attention] = [quantize_outputs_(m, option.format)
                                        for m in self.kv_projections[attention]]
        self.kv_current[attention] = option
        return True

    def restore_(self) -> None:
        """Every layer back to its full-precision weight, every KV cache to the model's."""
        for name in self.modules:
            self.set_layer_(name, None)
        for attention in self.kv_projections:
            self.set_kv_(attention, None)

    def apply_(self, candidate: Candidate) -> int:
        """Point every layer at its variant for ``candidate`` and set its KV-cache precisions;
        returns how many layers (and caches) changed."""
        wanted = self.space.decode(candidate)
        if self.levels is not None:  # what the level database holds: read in parallel threads
            load_stored_(self, [(n, o) for n, o in wanted.items()
                                if o is not None and self.current[n] != o])
        for name, option in wanted.items():  # compress first: gathering statistics restores fp
            if self.current[name] != option:
                self.variant(name, option)
        changed = sum(self.set_layer_(name, option) for name, option in wanted.items())
        return changed + sum(self.set_kv_(attention, option)
                             for attention, option in self.space.decode_kv(candidate).items())

    # -- scoring ------------------------------------------------------------------------------
    @torch.inference_mode()
    def measure(self, samples: int | None = None) -> tuple[float, dict[str, float]]:
        """The objective of the model as it stands, and its extras, on the first ``samples``
        calibration samples (all: None). Sums stay on the device until the end: one sync."""
        total: torch.Tensor | float = 0.0
        count: torch.Tensor | float = 0.0
        extra_sums: dict[str, list] = {}
        limit = self.samples if samples is None else min(samples, self.samples)
        seen = 0
        for batch, ref in zip(self.batches, self.reference, strict=True):
            if seen >= limit:
                break
            take = min(limit - seen, batch["input_ids"].shape[0])
            sub = {k: v[:take] for k, v in batch.items()} if take < batch["input_ids"].shape[0] \
                else batch
            (s, n), extras = self.objective.score(slice_reference(ref, take), self.model(**sub), sub)
            total, count = total + s, count + n
            for key, (es, en) in extras.items():
                acc = extra_sums.setdefault(key, [0.0, 0.0])
                acc[0], acc[1] = acc[0] + es, acc[1] + en
            seen += take
        value = float(total) / max(float(count), 1.0)
        means = {k: float(es) / max(float(en), 1.0) for k, (es, en) in extra_sums.items()}
        return value, self.objective.finish(means) if means else {}

    def score(self, samples: int | None = None) -> float:
        """The objective of the model as it stands, on the first ``samples`` samples (all: None)."""
        return self.measure(samples)[0]

    def evaluate(self, candidate: Candidate) -> EvalOutcome:
        """Apply and score ``candidate``; non-finite weights or scores fail it, with the reason."""
        start = time.perf_counter()
        if self.weight_error is not None:
            return EvalOutcome(None, 0.0, self.weight_error)
        try:
            self.apply_(candidate)
        except WorkerError as exc:
            return EvalOutcome(None, time.perf_counter() - start, str(exc))
        value, extra = self.measure(candidate.samples)
        seconds = time.perf_counter() - start
        if not math.isfinite(value):
            return EvalOutcome(None, seconds, f"objective is not finite ({value})")
        return EvalOutcome(value, seconds, extra={k: v for k, v in extra.items()
                                                   if math.isfinite(v)})

