"""Exporting a plan as a compressed-tensors checkpoint (the format vLLM and transformers load),
holding exactly the integers, scales and zero points the trial was scored with.

The plan is applied the one way (:func:`.checkpoint.plan_worker`); each layer's stored parts come
from its format's handler (:mod:`.registry`: ``encode``, checked to rebuild the scored weight
bit for bit) and its compressed-tensors arguments from the same handler
(``compressed_tensors_args``). One config group per distinct option, targeting the layers' module
names (never class names), so no two groups overlap. compressed-tensors lays out the tensors in
vLLM's layouts (``pack-quantized``: ``weight_packed``, ``weight_scale``, ``weight_shape`` and,
asymmetric, the zero points packed along the output dimension, [out·b/32, groups]); the codes
are then overwritten with mpsearch's own, so nothing is re-rounded. The codes use
compressed-tensors' signed convention: asymmetric q_ct = q − 2^(b−1) and z_ct = z − 2^(b−1), so
q_ct − z_ct = q − z (the zero-point sign convention that makes checkpoints "load fine but produce
garbage" when missed); symmetric codes are signed in both.

A plain ``AutoModel*.from_pretrained(DIR)`` loads the result (transformers builds the packed
modules, then compressed-tensors decompresses them on the first forward pass, computing ŵ in the
model's dtype). Scales are written as float16, the cost model's 16 bits, and widened exactly into
the scale parameters compressed-tensors creates in that dtype (a bfloat16 model, which cannot
hold every fp16 scale, is refused where it would round one). vLLM's asymmetric layout needs
compressed-tensors 0.17.1: from 0.18 on, the packed modules are built on the meta device without
packing the zero point, so a [out·b/32, groups] zero point meets an [out, groups] parameter
(``docs/formats.md``). transformers' other route, ``dequantize=True``, decompresses every layer
with the first config group's scheme, which garbles a mixed plan.

Sentence-transformers files (``modules.json``, pooling, normalize) are copied beside it.
``SentenceTransformer(DIR)`` (6.2) calls the model as ``getattr(model, "forward")(...)``, past
``nn.Module.__call__`` and so past the forward pre-hook (``ct_decompress_hook``, on the top-level
model) through which compressed-tensors decompresses: one call of ``st[0].model`` itself runs
the hook, and then it gives the trial's embeddings. No checkpoint setting changes either side
(each route tried, ``docs/formats.md``): ``run_compressed: false`` only sets ``dequantize``, the
loader's one route that decompresses while loading, which takes one config group's scheme for
every layer and stops on a mixed checkpoint; ``model_kwargs`` from ``sentence_bert_config.json``
are a dict, which transformers refuses beside the checkpoint's config; a modality ``method`` of
``__call__`` runs the hook but drops every input. Fused MoE experts (3-D
parameters) are written in the checkpoint's per-expert layout under one ``re:`` group, which
transformers' loader decompresses into the fused parameters: one symmetric int or FP8 option for
all of them (:func:`_write_experts_`). Options the
format cannot hold (NF4, FP8 E5M2,
pruning, GPT-2's Conv1D layers, which compressed-tensors does not quantize) are refused before
anything is written, naming the layer and the option.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from mpsearch.spaces.options import QuantOption
from mpsearch.spaces.runtime import fused_conflicts, refusal

from .activations import (
    FP8_MAX,
    FP8_MIN_SCALE,
    KV_CACHE_SCHEME,
    input_activation_args,
    kv_cache_amax_,
)
from .checkpoint import (
    PLAN_FILE,
    CheckpointError,
    _copy_side_files,
    _planned_modules,
    _prepare_out,
    plan_worker,
)
from .layers import ExpertSlice, oriented_shape
from .registry import Encoded, FormatError, handler_for
from .worker import WorkerSetup

if TYPE_CHECKING:
    from transformers import PreTrainedModel



class ExportError(CheckpointError):
    """A plan cannot be exported in the requested format."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how large its weights are on disk."""

    path: Path
    weight_bytes: int  # of the weight files (safetensors), the format's metadata included
    groups: dict[str, list[str]]  # config group → option label and module names


def require(module: str, package: str) -> None:
    """:class:`ExportError` naming the extra to install if ``module`` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ExportError(f"this export needs the package {package}: "
                          "pip install 'mpsearch[export]'")


def compressed_tensors_schemes(model: nn.Module, options: Mapping[str, QuantOption],
                               runtime: str = "transformers") -> dict[str, dict[str, Any] | None]:
    """Layer name → compressed-tensors ``QuantizationArgs`` keywords (None: dense), or
    :class:`ExportError` naming the first layer and option the format (or, for ``runtime``
    ``vllm``, vLLM: its kernels, its fused q/k/v and gate/up) cannot hold."""
    modules = _planned_modules(model, options)
    if runtime == "vllm":
        for name, option in options.items():
            if why := refusal("vllm", option):
                raise ExportError(f"layer {name}: option {option.label} cannot be exported for "
                                  f"vLLM: {why}")
        if conflicts := fused_conflicts(options):
            raise ExportError(f"cannot export for vLLM: {conflicts[0]} (search with "
                              "space.runtime: vllm, which ties them)")
    schemes: dict[str, dict[str, Any] | None] = {}
    for name, option in options.items():
        module = modules[name]
        try:
            args = handler_for(option).compressed_tensors_args(option, oriented_shape(module)[1])
        except FormatError as exc:
            raise ExportError(f"layer {name}: option {option.label} cannot be exported to "
                              f"compressed-tensors: {exc}") from None
        if args is not None and isinstance(module, ExpertSlice):
            _check_expert_option(name, option, module)
        elif args is not None and isinstance(module, nn.Embedding):
            # compressed-tensors packs an embedding, but no consumer loads it: transformers
            # initialises every nn.Embedding through its .weight (gone once packed), vLLM's
            # compressed-tensors layers are Linear ones
            raise ExportError(f"layer {name}: option {option.label} cannot be exported to "
                              f"compressed-tensors: it is an embedding, which transformers' "
                              f"loader cannot rebuild once packed (and vLLM reads quantized "
                              f"Linear layers only); give it fp16 or export GGUF")
        elif args is not None and not isinstance(module, nn.Linear):
            raise ExportError(f"layer {name}: option {option.label} cannot be exported to "
                              f"compressed-tensors: it quantizes nn.Linear layers only, and this "
                              f"is a {type(module).__name__} (GPT-2's Conv1D); export GGUF instead")
        schemes[name] = args
    _check_one_expert_scheme(modules, options, schemes)
    return schemes


# The checkpoint's per-expert matrices (``...experts.3.w1``), never the fused module
# (``...experts``): transformers' loader takes the experts' scheme from the group whose ``re:``
# target names experts (``get_experts_scheme``), and the instantiated model has no module it
# matches, so compressed-tensors builds nothing for it and the loader decompresses the experts.
EXPERTS_TARGET = r"re:.*experts\.\d+\.[^.]+$"


def _check_expert_option(name: str, option: QuantOption, target: ExpertSlice) -> None:
    """:class:`ExportError` unless transformers' loader rebuilds the slice exactly: it unpacks
    fused experts without zero points or global scales (``CompressedTensorsDequantize``), so
    symmetric int (packed) and FP8 E4M3 weight-only experts load, nothing else."""
    why = None
    if target.transposed:
        why = "its parameter is stored [experts, in, out], which the export does not write"
    elif option.activations:
        why = "transformers runs fused experts dense, without quantized inputs"
    elif option.format == "int" and not option.symmetric:
        why = ("transformers' loader unpacks fused experts without zero points "
               "(CompressedTensorsDequantize); use a symmetric option")
    elif option.format not in ("int", "fp8_e4m3"):
        why = ("transformers' loader rebuilds fused experts from symmetric int or fp8_e4m3 "
               "parts only")
    if why is not None:
        raise ExportError(f"layer {name}: option {option.label} cannot be exported to "
                          f"compressed-tensors as a fused expert: {why}")


def _check_one_expert_scheme(modules: Mapping[str, Any], options: Mapping[str, QuantOption],
                             schemes: Mapping[str, dict[str, Any] | None]) -> None:
    """:class:`ExportError` unless every fused-expert slice of the model takes one quantized
    option or none does: a checkpoint holds one scheme for its experts (transformers decompresses
    them all with ``get_experts_scheme``, and drops a dense expert beside packed ones)."""
    slices = [n for n, t in modules.items() if isinstance(t, ExpertSlice)]
    quantized = [n for n in slices if schemes.get(n) is not None]
    if not quantized:
        return
    first = quantized[0]
    for name in slices:
        if name not in options or options[name] != options[first]:
            given = options[name].label if name in options else "nothing (left dense)"
            raise ExportError(f"layer {name}: option {given} cannot be exported to "
                              f"compressed-tensors beside {first}'s {options[first].label}: a "
                              "checkpoint holds one scheme for all its fused experts (give every "
                              "expert slice the same option: one space.layers rule of one "
                              "option for the experts)")


def _refuse_fp4_outside_bfloat16(options: Mapping[str, QuantOption], dtype: str,
                                 runtime: str) -> None:
    """compressed-tensors 0.17.1 decompresses NVFP4 and MXFP4 weights into bfloat16
    (``unpack_fp4_from_uint8``'s dtype; ``decompress`` computes ŵ in it) and installs that tensor
    as the layer's weight without casting it, so in a float16 or float32 model the layer's matmul
    meets a bfloat16 weight and stops ("self and mat2 must have the same dtype"). No layout
    avoids it: the FP4 formats are the only ones holding E2M1 codes at 4 bits. Such a study is
    refused for transformers (vLLM runs the same parts with its own kernels)."""
    if runtime != "transformers" or dtype == "bfloat16":
        return
    for name, option in options.items():
        if option.format in ("nvfp4", "mxfp4"):
            raise ExportError(f"layer {name}: option {option.label} cannot be exported to "
                              f"compressed-tensors from a {dtype} study for transformers: "
                              "compressed-tensors 0.17.1 decompresses FP4 weights to bfloat16 "
                              f"and does not cast them, so a {dtype} model's matmul fails on the "
                              "mixed dtypes (score in bfloat16, or --runtime vllm)")


def _config_groups(options: Mapping[str, QuantOption],
                   schemes: Mapping[str, dict[str, Any] | None],
                   experts: Collection[str] = ()) -> dict[str, tuple[str, list[str]]]:
    """group name → (option label, module names), one group per distinct quantized option,
    then ``experts`` (the fused-expert slices, one option) as the group ``experts``."""
    by_label: dict[str, list[str]] = {}
    for name, option in options.items():
        if schemes[name] is not None and name not in experts:
            by_label.setdefault(option.label, []).append(name)
    groups = {f"group_{i}": (label, names) for i, (label, names) in enumerate(by_label.items())}
    if experts:
        groups["experts"] = (options[next(iter(experts))].label, list(experts))
    return groups


def _signed(codes: torch.Tensor, option: QuantOption) -> torch.Tensor:
    """compressed-tensors' int8 codes: symmetric codes are signed already; asymmetric ones
    (unsigned, as their zero points) shift down by 2^(b−1)."""
    return (codes - (0 if option.symmetric else 2 ** (option.bits - 1))).to(torch.int8)


def _scale_parts(name: str, enc: Encoded, dtype: torch.dtype) -> torch.Tensor:
    """``enc``'s scales as written: NVFP4's as E4M3, MXFP4's as E8M0 exponents (uint8, 2^(e−127)),
    the others as float16, the cost model's 16 bits (fp16 values: the loader widens them exactly
    into the scale parameters compressed-tensors creates in the model's dtype). A bfloat16 model's
    parameters cannot hold every fp16 scale: such a layer is refused."""
    assert enc.scale is not None
    if enc.option.format == "nvfp4":
        return enc.scale.to(torch.float8_e4m3fn)  # exact: the scales are E4M3 values
    if enc.option.format == "mxfp4":
        _, exp = torch.frexp(enc.scale)  # scale = 2^(exp − 1), E8M0's range
        return (exp - 1 + 127).to(torch.uint8)
    scale = enc.scale.to(torch.float16)
    if dtype == torch.bfloat16:
        rounds = scale.to(dtype).float() != enc.scale
        if rounds.any():
            first = int(rounds.flatten().nonzero()[0])
            was, now = float(enc.scale.flatten()[first]), float(scale.flatten()[first].bfloat16())
            raise ExportError(
                f"layer {name}: option {enc.option.label} cannot be exported to "
                f"compressed-tensors from a bfloat16 study: compressed-tensors 0.17.1 creates "
                f"int and FP8 scales in the model's dtype, and {int(rounds.sum())} of the "
                f"{rounds.numel()} fp16 scales the trial was scored with round in bfloat16 "
                f"({was!r} loads as {now!r}), so the loaded weights would not be the scored ones "
                "(score in float16 or float32)")
    return scale


def _store_parts_(module: nn.Module, enc: Encoded, scale_values: torch.Tensor) -> None:
    """Overwrite the compressed module's tensors with ``enc``'s (after compress_model)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    option = enc.option
    with torch.no_grad():
        scale = cast(torch.Tensor, module.weight_scale)
        scale.data = scale_values.reshape(scale.shape).clone()
        if option.format == "int" and not hasattr(module, "weight_packed"):
            module.weight.data = _signed(enc.values, option)  # int-quantized (W8A8): int8 codes
        elif option.format == "int":
            packed = pack_to_int32(_signed(enc.values, option), option.bits)
            assert packed.shape == module.weight_packed.shape
            module.weight_packed.data = packed
            if enc.zero_point is not None:  # vLLM's layout: packed along the output dimension
                zp = pack_to_int32(_signed(enc.zero_point, option), option.bits, packed_dim=0)
                assert zp.shape == module.weight_zero_point.shape, (zp.shape,
                                                                    module.weight_zero_point.shape)
                module.weight_zero_point.data = zp
        elif option.format in ("nvfp4", "mxfp4"):
            from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8

            packed = pack_fp4_to_uint8(enc.values.float())  # exact: the values are E2M1 numbers
            assert packed.shape == module.weight_packed.shape
            module.weight_packed.data = packed
            if enc.global_scale is not None:  # NVFP4: compressed-tensors stores 1/g
                inverse = cast(torch.Tensor, module.weight_global_scale)
                inverse.data = (1 / enc.global_scale.float()).reshape(inverse.shape)
        else:  # FP8 E4M3: the float8 values as they are
            module.weight.data = enc.values.clone()


def _dense_fp16_(modules: Mapping[str, nn.Module], options: Mapping[str, QuantOption],
                 schemes: Mapping[str, dict[str, Any] | None], dtype: torch.dtype) -> None:
    """``fp16`` layers of a float32 model are written as float16 (their values are fp16 already;
    the loader widens them back exactly), so they take the 16 bits the cost model charges."""
    if dtype != torch.float32:
        return
    for name, option in options.items():
        if schemes[name] is None and option.format == "fp16" and name in modules:
            weight = cast(torch.Tensor, modules[name].weight)
            half = weight.data.half()
            assert torch.equal(half.float(), weight.data), name
            weight.data = half


def _expert_format(option: QuantOption) -> str:
    """The experts group's compressed-tensors format (no module of the model infers it)."""
    return "pack-quantized" if option.format == "int" else "float-quantized"


def _write_experts_(out: Path, parts: Mapping[str, Encoded], weights: Mapping[str, torch.Tensor],
                    dtype: torch.dtype) -> None:
    """Replace the dense expert matrices ``save_pretrained`` wrote (the fused parameters split
    back into the checkpoint's own per-expert layout, e.g. Mixtral's ``experts.3.w1``/``w3`` of
    ``gate_up_proj``) by their compressed-tensors parts, cut from the slice whose scored rows
    they are. Int scales are written in the model's dtype: the loader computes the experts' ŵ in
    the scale's dtype (fp16 scales would round a float32 study's products), and a bfloat16
    study whose fp16 scale bfloat16 cannot hold is refused."""
    import hashlib

    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import load_file, save_file

    def digest(t: torch.Tensor) -> bytes:
        return hashlib.sha1(t.contiguous().flatten().view(torch.uint8).numpy().tobytes()).digest()

    files = {f: load_file(f) for f in sorted(out.glob("*.safetensors"))}
    expert_key = re.compile(r".*experts\.\d+\.[^.]+\.weight$")
    keys = {k: f for f, sd in files.items() for k in sd if expert_key.fullmatch(k)}
    heights = {files[f][k].shape[0] for k, f in keys.items()}
    blocks: dict[bytes, tuple[str, int]] = {}
    for name, w in weights.items():
        for r in heights:
            for o in range(0, w.shape[0] - r + 1, r) if w.shape[0] % r == 0 else ():
                blocks.setdefault(digest(w[o:o + r]), (name, o))
    index = out / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    for key, f in keys.items():
        dense = files[f].pop(key)
        if (found := blocks.get(digest(dense))) is None:
            raise ExportError(f"the checkpoint's expert matrix {key} is none of the planned "
                              "slices' rows: this architecture's expert layout is not supported")
        name, o = found
        enc, base = parts[name], key.removesuffix(".weight")
        option, rows = enc.option, slice(o, o + dense.shape[0])
        assert enc.scale is not None
        new: dict[str, torch.Tensor] = {}
        if option.format == "int":
            scale = enc.scale[rows].to(dtype)
            if not torch.equal(scale.float(), enc.scale[rows]):
                raise ExportError(f"layer {name}: option {option.label} cannot be exported to "
                                  f"compressed-tensors from a {dtype} study as a fused expert: "
                                  "the loader computes the experts in the scales' dtype, which "
                                  "cannot hold its fp16 scales (score in float16 or float32)")
            new[f"{base}.weight_packed"] = pack_to_int32(_signed(enc.values[rows], option),
                                                         option.bits)
            new[f"{base}.weight_scale"] = scale
            new[f"{base}.weight_shape"] = torch.tensor(dense.shape)
        else:  # FP8 E4M3: the loader computes float32 values · scales, then the model's dtype
            new[f"{base}.weight"] = enc.values[rows].contiguous()
            new[f"{base}.weight_scale"] = enc.scale[rows].to(torch.float16)
        files[f].update(new)
        if weight_map is not None:
            weight_map.pop(key, None)
            weight_map.update(dict.fromkeys(new, f.name))
    for f, sd in files.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, f, metadata={"format": "pt"})
    if weight_map is not None:
        data = json.loads(index.read_text())
        data["weight_map"] = weight_map
        index.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def kv_cache_option(kv_cache: Mapping[str, QuantOption]) -> QuantOption | None:
    """The one precision of a plan's quantized KV cache (None: 16-bit), or :class:`ExportError`:
    compressed-tensors holds one ``kv_cache_scheme`` for the whole model."""
    labels = {o.label for o in kv_cache.values()}
    if labels <= {"fp16"}:
        return None
    if len(labels) > 1:
        mixed = ", ".join(f"{n}={o.label}" for n, o in list(kv_cache.items())[:3])
        raise ExportError(f"compressed-tensors holds one kv_cache_scheme per model, the plan gives "
                          f"{mixed}, ...; search with space.runtime: vllm, which takes one")
    return next(iter(kv_cache.values()))


def _store_kv_scales_(worker: Any, model: nn.Module, kv_cache: Mapping[str, QuantOption]) -> None:
    """``{attention}.k_scale`` and ``.v_scale`` (fp32, one value each, shaped [1] as the
    parameters compressed-tensors 0.17.1 creates for them on load; vLLM reads either): the
    static FP8 scale of each layer's keys and values, amax / 448 over the calibration samples, with the
    plan's weights (and W8A8 inputs) as scored."""
    if not worker.batches:
        raise ExportError("an FP8 KV cache's scales are calibrated on the plan's calibration "
                          "texts, and the plan records none")
    modules = dict(model.named_modules())
    projections = {a: (modules[f"{a}.k_proj"], modules[f"{a}.v_proj"]) for a in kv_cache}
    batches = [{k: v.to("cpu") for k, v in b.items()} for b in worker.batches]
    for attention, (k, v) in kv_cache_amax_(model, projections, batches).items():
        for name, value in (("k_scale", k), ("v_scale", v)):
            modules[attention].register_buffer(
                name, torch.tensor([max(value / FP8_MAX, FP8_MIN_SCALE)], dtype=torch.float32))


def _add_config_group(out: Path, group: str, scheme: Any) -> None:
    """``scheme`` (a ``QuantizationScheme``) as ``group`` of the checkpoint's config groups."""
    path = out / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["quantization_config"]["config_groups"][group] = scheme.model_dump(mode="json")
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _add_kv_cache_scheme(out: Path) -> None:
    """The FP8 ``kv_cache_scheme`` in the checkpoint's ``quantization_config`` (vLLM then runs
    ``kv_cache_dtype=fp8`` with the stored scales)."""
    path = out / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["quantization_config"]["kv_cache_scheme"] = dict(KV_CACHE_SCHEME)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def export_compressed_tensors(setup: WorkerSetup, options: Mapping[str, QuantOption],
                              out_dir: str | Path, plan: Mapping[str, Any] | None = None,
                              runtime: str = "transformers",
                              kv_cache: Mapping[str, QuantOption] | None = None) -> ExportResult:
    """Apply ``options`` on ``setup`` and write a compressed-tensors checkpoint to ``out_dir``.

    ``setup`` is the trial's scoring setup (its dtype is the checkpoint's; GPTQ and Wanda use its
    calibration texts). ``runtime`` ``vllm`` also refuses what vLLM cannot load (asymmetric or
    other than 4- and 8-bit integers, fused layers with different options). ``kv_cache``
    (attention layer → precision, the plan's) at FP8 writes the config's ``kv_cache_scheme`` and
    each layer's ``k_scale``/``v_scale``, calibrated on ``setup``'s texts (one precision for all).
    Raises :class:`ExportError` (nothing written) for an option the format
    cannot hold, :class:`CheckpointError` for an unwritable ``out_dir`` or a plan naming layers
    the model lacks.
    """
    require("compressed_tensors", "compressed-tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from transformers import AutoTokenizer

    schemes = compressed_tensors_schemes(_shapes_model(setup), options, runtime)
    kv_option = kv_cache_option(kv_cache or {})
    _refuse_fp4_outside_bfloat16(options, setup.dtype, runtime)
    out = _prepare_out(out_dir)
    try:
        worker = plan_worker(setup, options)
        model = cast("PreTrainedModel", worker.model.cpu())
        dtype = next(model.parameters()).dtype
        targets = _planned_modules(model, options)
        experts = [n for n in options
                   if schemes[n] is not None and isinstance(targets[n], ExpertSlice)]
        encoded: dict[str, Encoded] = {}
        for name, option in options.items():
            if schemes[name] is None:
                continue
            enc = worker.encoded(name, option)  # from the level database when it holds it
            scored = worker.variant(name, option)
            assert torch.equal(enc.dequantize(scored.dtype).to(scored.device), scored), name
            encoded[name] = enc
        if kv_option is not None:  # calibrated while the model still runs as scored
            assert kv_cache is not None
            _store_kv_scales_(worker, model, kv_cache)
        groups = _config_groups(options, schemes, experts)
        config = QuantizationConfig(
            config_groups={group: QuantizationScheme(
                targets=[EXPERTS_TARGET] if group == "experts" else names,
                weights=QuantizationArgs(**schemes[names[0]]),  # type: ignore[arg-type]
                input_activations=_input_args(options[names[0]], QuantizationArgs),
                format=_expert_format(options[names[0]]) if group == "experts" else None)
                for group, (_, names) in groups.items()},
            quantization_status="frozen")
        apply_quantization_config(model, config)
        compressor = ModelCompressor.from_pretrained_model(model)
        compressor.compress_model(model)
        modules = dict(model.named_modules())
        for name, enc in encoded.items():
            if name not in experts:
                _store_parts_(modules[name], enc, _scale_parts(name, enc, dtype))
        _dense_fp16_(modules, options, schemes, dtype)
        _copy_side_files(setup.model_path, out)
        model.save_pretrained(out)
        if experts:
            _write_experts_(out, {n: encoded[n] for n in experts},
                            {n: worker.variant(n, options[n]).to(dtype) for n in experts}, dtype)
        compressor.update_config(str(out))
        if experts:  # no module of the model carries it, so the compressor left it out
            _add_config_group(out, "experts", config.config_groups["experts"])
        if kv_option is not None:
            _add_kv_cache_scheme(out)
        AutoTokenizer.from_pretrained(setup.model_path).save_pretrained(out)
        if plan is not None:
            (out / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint to {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return ExportResult(out, weight_bytes(out),
                        {g: [label, *names] for g, (label, names) in groups.items()})


def _input_args(option: QuantOption, args_class: Any) -> Any:
    """The group's ``input_activations`` (W8A8: per-token dynamic), None when weight-only."""
    args = input_activation_args(option)
    return None if args is None else args_class(**args)


def _shapes_model(setup: WorkerSetup) -> nn.Module:
    """The model on the meta device: its module types and shapes, without its weights."""
    from transformers import AutoConfig

    from .model_loading import _auto_class

    config = AutoConfig.from_pretrained(setup.model_path)
    with torch.device("meta"):
        return _auto_class(setup.kind).from_config(config)


def weight_bytes(directory: str | Path) -> int:
    """Bytes of the weight files in ``directory`` (what the cost model's total_bytes predicts)."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*.safetensors"))

