"""Typed options for data parallelism: strings from users become enums here, and only here."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class _Choice(str, enum.Enum):
    @classmethod
    def parse(cls, value: str | _Choice, what: str) -> _Choice:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(repr(c.value) for c in cls)
            raise ValueError(f"unknown {what} {value!r}; allowed: {allowed}") from None


class LRScaling(_Choice):
    LINEAR = "linear"
    SQRT = "sqrt"
    NONE = "none"


class Compression(_Choice):
    NONE = "none"
    FP16 = "fp16"


class ReduceOp(_Choice):
    AVERAGE = "average"
    SUM = "sum"
    ADASUM = "adasum"


@dataclass(frozen=True)
class DistributedOptions:
    """How an optimizer is made data-parallel. Validated on construction."""

    lr_scaling: LRScaling = LRScaling.LINEAR
    warmup_steps: int = 0
    compression: Compression = Compression.NONE
    op: ReduceOp = ReduceOp.AVERAGE
    accumulation_steps: int = 1
    # ZeRO stage 1: each rank keeps optimizer state for, and updates, 1/N of the parameters.
    shard_optimizer_state: bool = False
    # ZeRO stage 2 (needs stage 1): between backward and step each rank holds only its shard of
    # the averaged gradients.
    shard_gradients: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_scaling", LRScaling.parse(self.lr_scaling, "lr_scaling"))
        object.__setattr__(self, "compression", Compression.parse(self.compression, "compression"))
        object.__setattr__(self, "op", ReduceOp.parse(self.op, "op"))
        for name in ("warmup_steps", "accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        for name in ("shard_optimizer_state", "shard_gradients"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if self.shard_gradients and not self.shard_optimizer_state:
            raise ValueError(
                "shard_gradients=True needs shard_optimizer_state=True: a rank keeps only the "
                "gradients of the parameters it updates"
            )
        if self.shard_optimizer_state and self.op is ReduceOp.ADASUM:
            raise ValueError(
                "shard_optimizer_state=True needs op 'average' or 'sum': Adasum combines whole "
                "gradients, which a reduce-scatter never holds"
            )
        if self.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {self.accumulation_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def as_params(self) -> dict[str, str | int]:
        """Flat, string-valued view for logging."""
        return {
            "lr_scaling": self.lr_scaling.value,
            "warmup_steps": self.warmup_steps,
            "compression": self.compression.value,
            "op": self.op.value,
            "accumulation_steps": self.accumulation_steps,
            "shard_optimizer_state": self.shard_optimizer_state,
            "shard_gradients": self.shard_gradients,
        }
