"""What one layer can be turned into: a compression option, and its exact storage cost.

An option is a value (frozen dataclass), so it can be hashed, stored as JSON and sent to workers.
Its cost is *effective* bits per weight: the payload bits plus everything stored beside them (scales,
zero points), because that, not the nominal bit-width, is what a budget pays for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Formats the cost model knows. "int" is round-to-nearest integer quantization; "fp16" is the
# uncompressed 16-bit passthrough that every space may offer as its most expensive level.
FORMATS = ("int", "fp16")

SCALE_BITS = 16  # scales and zero points are stored in fp16
MIN_INT_BITS, MAX_INT_BITS = 2, 8


@dataclass(frozen=True, order=True)
class QuantOption:
    """One per-layer choice.

    ``group_size=None`` means one scale per output channel (the group is the whole input row).
    """

    format: str = "int"
    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; valid: {', '.join(FORMATS)}")
        if self.format == "fp16":
            if self.bits != 16:
                raise ValueError("format fp16 has 16 bits")
            return
        if not MIN_INT_BITS <= self.bits <= MAX_INT_BITS:
            raise ValueError(f"int bits must be {MIN_INT_BITS}..{MAX_INT_BITS}, got {self.bits}")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"group_size must be positive or null, got {self.group_size}")

    @property
    def label(self) -> str:
        """Short, unique, human-readable name, e.g. ``int4-g128-asym`` or ``int8-ch-sym``."""
        if self.format == "fp16":
            return "fp16"
        group = "ch" if self.group_size is None else f"g{self.group_size}"
        return f"int{self.bits}-{group}-{'sym' if self.symmetric else 'asym'}"

    def group_for(self, in_features: int) -> int:
        """The number of weights that share one scale, for a layer with ``in_features`` inputs."""
        return in_features if self.group_size is None else self.group_size

    def accepts(self, in_features: int) -> str | None:
        """Why a layer with ``in_features`` inputs cannot take this option, or None if it can."""
        if self.format == "int" and self.group_size is not None and in_features % self.group_size:
            return f"group size {self.group_size} does not divide in_features={in_features}"
        return None

    def effective_bits(self, in_features: int) -> float:
        """Bits stored per weight, scales and zero points included.

        Asymmetric integers store an fp16 scale and an fp16 zero point per group, symmetric ones a
        scale only: int4 with groups of 128 costs 4 + 32/128 = 4.25 (asym) or 4 + 16/128 = 4.125.
        """
        if self.format == "fp16":
            return 16.0
        per_group = SCALE_BITS if self.symmetric else 2 * SCALE_BITS
        return self.bits + per_group / self.group_for(in_features)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantOption:
        return cls(**data)
