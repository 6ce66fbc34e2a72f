"""A tensor as a caller sent it, and the one decoder both protocols use.

Decoding (which raises InvalidArgument when the contents do not fit the shape) waits until the
shape has passed the checks against the model and the limits, so a caller hears "this model
takes 2 features" rather than a byte count derived from a wrong shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstm_serving.contract import INPUT
from lstm_serving.errors import InvalidArgument

MAX_DIMENSION = 2**31 - 1
MAX_RANK = 8  # more dimensions than any tensor here has; checked before a shape is read


def check_rank(rank: int, field: str) -> None:
    """Refuses a shape of over MAX_RANK dimensions before anything iterates over it."""
    if rank > MAX_RANK:
        raise InvalidArgument(f"{field} shape has {rank} dimensions; at most {MAX_RANK}")


def shape_text(shape: Sequence[int]) -> str:
    """A shape as a message shows it: whole, or its start where it is long."""
    dims = list(shape[: MAX_RANK + 1])
    return str(dims) if len(shape) <= MAX_RANK else f"{str(dims[:MAX_RANK])[:-1]}, ...]"


def check_dimensions(shape: Sequence[int], field: str) -> None:
    """Each dimension in 0..2^31-1: numpy cannot even describe larger arrays."""
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{field} shape {shape_text(shape)} has a negative dimension")
    if any(d > MAX_DIMENSION for d in shape):
        raise InvalidArgument(f"{field} shape {shape_text(shape)} has a dimension over 2^31 - 1")


@dataclass(frozen=True)
class Encoded:
    """A tensor as sent: its shape, and raw little-endian bytes or typed numbers (at most one;
    None where not sent). The labels name the fields in the caller's own protocol."""

    field: str  # the tensor, as errors name it: "input", "input 'lengths'"
    shape: tuple[int, ...]
    dtype: np.dtype  # little-endian
    data: bytes | None = None
    values: Sequence[float] | None = None
    data_label: str = "data"
    values_label: str = "values"

    @classmethod
    def of(cls, array: np.ndarray, field: str = INPUT) -> Encoded:
        """An array already in hand (tests, in-process callers)."""
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        return cls(field, tuple(array.shape), array.dtype, data=array.tobytes())

    @property
    def sent_bytes(self) -> int:
        """About what the tensor took on the wire: its raw bytes, or 8 a number."""
        if self.data is not None:
            return len(self.data)
        return 8 * len(self.values) if self.values is not None else 0

    def decode(self) -> np.ndarray:
        """The contents as an array of `shape`; raises InvalidArgument when they do not fit."""
        check_dimensions(self.shape, self.field)
        count = math.prod(self.shape)  # Python ints: a huge dimension cannot overflow
        data, values = self.data_label, self.values_label
        if self.data is not None and self.values is not None:
            raise InvalidArgument(f"{self.field}: set either {data} or {values}, not both")
        if self.data is not None:
            size = self.dtype.itemsize
            if len(self.data) != size * count:
                raise InvalidArgument(
                    f"{self.field} {data} has {len(self.data)} bytes; shape {list(self.shape)} "
                    f"needs {size * count} ({self.dtype.name}, {size} bytes each)"
                )
            return np.frombuffer(self.data, dtype=self.dtype).reshape(self.shape)
        if self.values is not None:
            if len(self.values) != count:
                raise InvalidArgument(
                    f"{self.field} {values} has {len(self.values)} numbers; shape "
                    f"{list(self.shape)} needs {count}"
                )
            return np.asarray(self.values, dtype=self.dtype).reshape(self.shape)
        if count == 0:
            return np.zeros(self.shape, dtype=self.dtype)
        raise InvalidArgument(f"{self.field}: neither {data} nor {values} is set")
