"""Tensor signatures: name, dtype (a `dtypes` row name) and shape (-1 for a dynamic dimension)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, field_validator

from shipyard.package.dtypes import BY_NAME


class TensorSpec(BaseModel):
    """One input or output of a model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: str
    shape: tuple[int, ...]

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in BY_NAME:
            raise ValueError(f"unknown dtype {value!r}; expected one of {sorted(BY_NAME)}")
        return value

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < -1 for d in value):
            raise ValueError(f"shape {list(value)} has a dimension below -1")
        return value

    @property
    def v2_datatype(self) -> str:
        return BY_NAME[self.dtype].v2

    @property
    def batched(self) -> bool:
        """True when the first dimension is dynamic, i.e. the model takes a batch."""
        return len(self.shape) > 0 and self.shape[0] == -1

    def shape_matches(self, shape: Sequence[int]) -> bool:
        want = self.shape
        if len(shape) != len(want):
            return False
        # a loop, not all() over a generator: this runs for every input of every request
        for i, got in enumerate(shape):  # noqa: SIM110
            if want[i] != got and want[i] != -1:
                return False
        return True

    def describe(self) -> str:
        dims = ", ".join("?" if d == -1 else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"
