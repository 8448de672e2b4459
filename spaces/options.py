"""What one layer can be turned into: a compression option, and its exact storage cost.

An option is a value (frozen dataclass), so it can be hashed, stored as JSON and sent to workers.
Its cost is *effective* bits per weight: the payload bits plus everything stored beside them (scales,
zero points, sparsity metadata), because that, not the nominal bit-width, is what a budget pays for.
Every cost is computed from the option's fields; ``docs/formats.md`` lists each format with its
label and formula.

Weights are ``out × in`` matrices; groups and blocks always run along the input dimension.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

SCALE_BITS = 16  # integer scales and zero points, FP8 channel scales and NF4 absmax are fp16
MIN_INT_BITS, MAX_INT_BITS = 2, 8
# gptq: same storage as rtn, better-chosen integers (workers/gptq.py); gptq-act: GPTQ with its
# columns in decreasing order of the Hessian's diagonal and static groups (each group's grid from
# the original weights), still the same storage: llm-compressor's ``actorder: weight`` (static)
ROUNDINGS = ("rtn", "gptq", "gptq-act")
GPTQ_ROUNDINGS = ("gptq", "gptq-act")
SPARSITY_PATTERNS = ("unstructured", "2:4")
SPARSITY_METHODS = ("magnitude", "wanda")  # wanda: |W|·‖X‖ per input channel (Sun et al., 2023)
ROW_POINTER_BITS = 32  # CSR index coding: one 32-bit offset per output row
# Activation schemes: the layer's input quantized per token, dynamically (a scale per row of the
# input from its absmax, at run time), as vLLM's W8A8 kernels do. "": weight-only.
ACTIVATIONS = ("int8", "fp8_e4m3")
# The weights each activation scheme is served with (compressed-tensors' W8A8 and FP8_DYNAMIC).
W8A8_LABELS = {"int8": "w8a8-int8", "fp8_e4m3": "w8a8-fp8"}


class Layout(NamedTuple):
    """The fixed storage layout of a non-integer format."""

    bits: int  # bits per stored value
    block: int | None  # weights per scale; None: one scale per output channel (or none, fp16)
    scale_bits: int  # bits per scale (0: no scale)


# Formats whose bit-width and block are part of the format itself.
LAYOUTS: dict[str, Layout] = {
    "fp16": Layout(16, None, 0),  # the uncompressed level every space may offer
    "fp8_e4m3": Layout(8, None, SCALE_BITS),  # OCP FP8 E4M3 (torch.float8_e4m3fn), fp16 row scale
    "fp8_e5m2": Layout(8, None, SCALE_BITS),  # OCP FP8 E5M2 (torch.float8_e5m2), fp16 row scale
    "nvfp4": Layout(4, 16, 8),  # E2M1 values, an FP8-E4M3 scale per 16 (+ one fp32 per tensor)
    "mxfp4": Layout(4, 32, 8),  # E2M1 values, an E8M0 power-of-two scale per 32 (OCP MX v1.0)
    "nf4": Layout(4, 64, SCALE_BITS),  # QLoRA NormalFloat-4 codes, an fp16 absmax per 64
    # GGUF's (llama.cpp's) legacy block formats, 32 weights a block, as ggml-quants.c lays them:
    "q4_0": Layout(4, 32, SCALE_BITS),  # 4-bit codes, an fp16 scale d: 18 bytes per 32 (4.5 bits)
    "q4_1": Layout(4, 32, 2 * SCALE_BITS),  # 4-bit codes, fp16 scale d and minimum m (5.0 bits)
    "q5_0": Layout(5, 32, SCALE_BITS),  # 5-bit codes (low nibble + high bit), fp16 d (5.5 bits)
    "q5_1": Layout(5, 32, 2 * SCALE_BITS),  # 5-bit codes, fp16 d and m (6.0 bits)
    "q8_0": Layout(8, 32, SCALE_BITS),  # int8 codes, an fp16 scale d: 34 bytes per 32 (8.5 bits)
}
FORMATS = ("int", *LAYOUTS)

_DEFAULTS: dict[str, Any] = {}  # field name -> default, filled in after the class


@dataclass(frozen=True, order=True)
class QuantOption:
    """One per-layer choice: a number format, optionally applied after pruning.

    ``format="int"`` is integer quantization with ``bits`` (2–8) and one fp16 scale (plus an fp16
    zero point if asymmetric) per ``group_size`` weights; ``group_size=None`` means one per output
    channel. ``clip`` picks each group's range by an MSE grid search instead of min/max;
    ``rounding="gptq"`` rounds with GPTQ, ``"gptq-act"`` with GPTQ in activation order (both the
    same storage as RTN), on the clipped grids when ``clip`` is set too.

    For the other formats (see :data:`LAYOUTS`) ``bits`` and ``group_size`` are set by the format:
    leaving them at their defaults or giving the format's own values are both fine; anything else
    is refused. ``symmetric``, ``clip`` and ``rounding`` apply to ``int`` only.

    ``sparsity`` is the fraction of weights set to zero (0 = dense), chosen per output row by
    ``sparsity_method``; ``sparsity_pattern="2:4"`` keeps 2 of every 4 consecutive weights (and
    sets ``sparsity`` to 0.5). Survivors are then quantized with the format.
    """

    format: str = "int"
    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False
    clip: bool = False
    rounding: str = "rtn"
    sparsity: float = 0.0
    sparsity_pattern: str = "unstructured"
    sparsity_method: str = "magnitude"
    activations: str = ""  # "" (weight-only), or a per-token dynamic scheme of ACTIVATIONS

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; valid: {', '.join(FORMATS)}")
        if self.format == "int":
            self._check_int()
        else:
            self._fix_layout(LAYOUTS[self.format])
        self._check_sparsity()
        self._check_activations()

    def _check_activations(self) -> None:
        if not self.activations:
            return
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {', '.join(ACTIVATIONS)} (or left out), "
                             f"got {self.activations!r}")
        if self.activations == "int8" and not (self.format == "int" and self.bits == 8
                                                and self.group_size is None and self.symmetric):
            raise ValueError("activations int8 goes with int8-ch-sym weights (w8a8-int8, the "
                             "scheme vLLM serves); use w8a8-int8")
        if self.activations == "fp8_e4m3" and self.format != "fp8_e4m3":
            raise ValueError("activations fp8_e4m3 goes with fp8_e4m3 weights (w8a8-fp8); "
                             "use w8a8-fp8")
        if self.sparse:
            raise ValueError("activation quantization takes dense weights; drop the sparsity")

    def _check_int(self) -> None:
        if not MIN_INT_BITS <= self.bits <= MAX_INT_BITS:
            raise ValueError(f"int bits must be {MIN_INT_BITS}..{MAX_INT_BITS}, got {self.bits}")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"group_size must be positive or null, got {self.group_size}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")

    def _fix_layout(self, layout: Layout) -> None:
        for name, fixed in (("bits", layout.bits), ("group_size", layout.block)):
            value = getattr(self, name)
            if value not in (fixed, _DEFAULTS[name]):
                raise ValueError(f"format {self.format} has {name}={fixed}; got {name}={value} "
                                 f"(leave {name} out)")
            object.__setattr__(self, name, fixed)
        for name in ("symmetric", "clip", "rounding"):
            if getattr(self, name) != _DEFAULTS[name]:
                raise ValueError(f"{name} applies to format int only; leave it out for {self.format}")

    def _check_sparsity(self) -> None:
        if self.sparsity_pattern not in SPARSITY_PATTERNS:
            hint = " (YAML reads an unquoted 2:4 as the number 124: write '2:4')" * (
                str(self.sparsity_pattern) == "124")
            raise ValueError(f"sparsity_pattern must be one of {', '.join(SPARSITY_PATTERNS)}, "
                             f"got {self.sparsity_pattern!r}{hint}")
        if self.sparsity_method not in SPARSITY_METHODS:
            raise ValueError(f"sparsity_method must be one of {', '.join(SPARSITY_METHODS)}, "
                             f"got {self.sparsity_method!r}")
        s = float(self.sparsity)
        if self.sparsity_pattern == "2:4":
            if s not in (0.0, 0.5):
                raise ValueError(f"sparsity_pattern 2:4 has sparsity 0.5; got sparsity={s}")
            s = 0.5
        if not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {s}")
        # canonical to a tenth of a percent, so the label (``s12.5``) names it exactly
        if abs(s * 1000 - round(s * 1000)) > 1e-6:
            raise ValueError(f"sparsity must be a multiple of 0.001, got {s}")
        object.__setattr__(self, "sparsity", round(s, 3))
        if s == 0.0 and self.sparsity_method != "magnitude":
            raise ValueError(f"sparsity_method {self.sparsity_method} needs sparsity > 0")

    # -- naming ----------------------------------------------------------------------------------
    @property
    def sparse(self) -> bool:
        return self.sparsity > 0

    @property
    def gptq(self) -> bool:
        """Rounded by GPTQ (in either column order): needs the layer's Hessian."""
        return self.rounding in GPTQ_ROUNDINGS

    @property
    def act_order(self) -> bool:
        """Rounded by GPTQ in activation order (static groups: the plain layout)."""
        return self.rounding == "gptq-act"

    @property
    def _rounding_suffix(self) -> str:
        return "-clip" * self.clip + ("" if self.rounding == "rtn" else f"-{self.rounding}")

    @property
    def label(self) -> str:
        """Short, unique, human-readable name; :meth:`from_label` reads it back.

        Grammar: ``BASE[+SPARSITY[-wanda]]`` where BASE is
        ``int{b}-{ch|g{n}}-{sym|asym}[-clip][-gptq|-gptq-act]``
        or a format name (``fp16``, ``fp8_e4m3``, ``nvfp4``, ...) and SPARSITY is ``2:4`` or
        ``s{percent}`` (``s50``, ``s12.5``). E.g. ``int4-g128-asym-gptq``,
        ``int3-g64-asym-clip-gptq-act``, ``nf4+2:4-wanda``.
        """
        if self.activations:
            return W8A8_LABELS[self.activations] + self._rounding_suffix
        if self.format == "int":
            group = "ch" if self.group_size is None else f"g{self.group_size}"
            base = f"int{self.bits}-{group}-{'sym' if self.symmetric else 'asym'}"
            base += self._rounding_suffix
        else:
            base = self.format
        if not self.sparse:
            return base
        pattern = "2:4" if self.sparsity_pattern == "2:4" else f"s{round(self.sparsity * 100, 1):g}"
        return f"{base}+{pattern}" + "-wanda" * (self.sparsity_method == "wanda")

    @classmethod
    def from_label(cls, label: str) -> QuantOption:
        """The option named ``label`` (the inverse of :attr:`label`); ValueError if it is none."""
        base, _, sparse = label.partition("+")
        kwargs: dict[str, Any] = {}
        if match := _W8A8_LABEL.match(base):
            kwargs.update(format="int", bits=8, group_size=None, symmetric=True,
                          activations="int8", clip=bool(match["clip"]),
                          rounding=match["gptq"][1:] if match["gptq"] else "rtn")
            if match["act"] == "fp8":
                kwargs = {"format": "fp8_e4m3", "activations": "fp8_e4m3"}
                if match["clip"] or match["gptq"]:
                    raise ValueError(f"option {label!r}: -clip and -gptq apply to w8a8-int8")
        elif base in LAYOUTS:
            kwargs["format"] = base
        elif match := _INT_LABEL.match(base):
            group = match["group"]
            kwargs.update(bits=int(match["bits"]), group_size=None if group == "ch" else int(group[1:]),
                          symmetric=match["sym"] == "sym", clip=bool(match["clip"]),
                          rounding=match["gptq"][1:] if match["gptq"] else "rtn")
        else:
            raise ValueError(f"option {label!r} is not a label like 'int4-g128-asym', "
                             f"'int3-g64-sym-clip', 'int8-ch-sym+s50', 'nf4+2:4', 'w8a8-int8', "
                             f"'w8a8-fp8' or one of "
                             f"{', '.join(LAYOUTS)}")
        if sparse:
            match = _SPARSE_LABEL.match(sparse)
            if not match:
                raise ValueError(f"option {label!r}: sparsity {sparse!r} is not '2:4', 's50' "
                                 "or 's12.5', optionally followed by '-wanda'")
            if match["pct"] is None:
                kwargs["sparsity_pattern"] = "2:4"
            else:
                kwargs["sparsity"] = round(float(match["pct"]) / 100, 3)
            kwargs["sparsity_method"] = "wanda" if match["wanda"] else "magnitude"
        return cls(**kwargs)

    # -- cost ------------------------------------------------------------------------------------
    def group_for(self, in_features: int) -> int:
        """The number of weights that share one scale, for a layer with ``in_features`` inputs."""
        return in_features if self.group_size is None else self.group_size

    def accepts(self, in_features: int) -> str | None:
        """Why a layer with ``in_features`` inputs cannot take this option, or None if it can."""
        if in_features <= 0:
            return f"in_features={in_features} is not positive"
        if self.group_size is not None and in_features % self.group_size:
            what = "group size" if self.format == "int" else f"{self.format} block size"
            return f"{what} {self.group_size} does not divide in_features={in_features}"
        if self.sparsity_pattern == "2:4" and in_features % 4:
            return f"2:4 sparsity needs in_features divisible by 4, got in_features={in_features}"
        return None

    def scale_bits(self, in_features: int) -> float:
        """Bits of scales and zero points per weight, counted over the full (dense) group structure."""
        if self.format == "int":
            per_group = SCALE_BITS if self.symmetric else 2 * SCALE_BITS
        else:
            per_group = LAYOUTS[self.format].scale_bits
        return per_group / self.group_for(in_features)

    def effective_bits(self, in_features: int) -> float:
        """Bits stored per weight: values, scales and zero points, and sparsity metadata.

        Dense: ``bits + scale_bits`` (int4-g128-asym: 4 + 32/128 = 4.25; nvfp4: 4 + 8/16 = 4.5).
        Scales are charged over the full group structure whether or not weights are pruned.

        2:4: every 4 weights store 2 values and a 2-bit position for each (NVIDIA's sparse
        tensor-core layout): ``bits/2 + 1 + scale_bits`` (int4-g128-asym+2:4: 2 + 1 + 0.25 = 3.25).

        Unstructured sparsity ``s`` keeps ``k = 1 − s`` of the weights: ``k·bits + index +
        scale_bits``, where ``index`` is the cheaper of a 1-bit-per-weight bitmap and CSR coding
        (a ⌈log2 in⌉-bit column index per kept value plus a 32-bit row pointer per row):
        ``min(1, k·⌈log2 in⌉ + 32/in)``. int8-ch-sym+s50 at in=512: 4 + 1 + 16/512 = 5.03125.
        """
        values, scales = float(self.bits), self.scale_bits(in_features)
        if not self.sparse:
            return values + scales
        if self.sparsity_pattern == "2:4":
            return values / 2 + 1.0 + scales
        keep = 1.0 - self.sparsity
        column_bits = max(1, math.ceil(math.log2(in_features)))
        index = min(1.0, keep * column_bits + ROW_POINTER_BITS / in_features)
        return keep * values + index + scales

    # -- storage ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field; ``activations`` only when set (what weight-only options stored before it
        existed read back as, so their stored spaces and identities do not change)."""
        data = asdict(self)
        if not self.activations:
            del data["activations"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantOption:
        """Read :meth:`to_dict`'s output; dicts saved before a field existed get its default."""
        return cls(**data)


_DEFAULTS.update({f.name: f.default for f in fields(QuantOption)})
_INT_LABEL = re.compile(r"^int(?P<bits>\d+)-(?P<group>ch|g\d+)-(?P<sym>sym|asym)"
                        r"(?P<clip>-clip)?(?P<gptq>-gptq(?:-act)?)?$")
_W8A8_LABEL = re.compile(r"^w8a8-(?P<act>int8|fp8)(?P<clip>-clip)?(?P<gptq>-gptq(?:-act)?)?$")
_SPARSE_LABEL = re.compile(r"^(?:(?P<pattern>2:4)|s(?P<pct>\d+(?:\.\d+)?))(?P<wanda>-wanda)?$")
