"""The one tensor decoder both protocols use: contents that fit the shape, or a refusal that
names the field as the caller's protocol spells it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lstm_serving.core.tensors import Encoded
from lstm_serving.errors import InvalidArgument

F32 = np.dtype("<f4")


def test_raw_bytes_and_typed_numbers_decode_to_the_same_array() -> None:
    x = np.arange(6, dtype=F32).reshape(1, 3, 2)
    raw = Encoded("input", (1, 3, 2), F32, data=x.tobytes()).decode()
    typed = Encoded("input", (1, 3, 2), F32, values=x.ravel().tolist()).decode()
    np.testing.assert_array_equal(raw, x)
    np.testing.assert_array_equal(typed, x)
    np.testing.assert_array_equal(Encoded.of(x).decode(), x)
    assert Encoded("input", (0, 3, 2), F32).decode().shape == (0, 3, 2)  # empty: nothing sent


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (Encoded("input", (1, 2, 2), F32, data=b"\0" * 15), "input data has 15 bytes; shape "
         "[1, 2, 2] needs 16 (float32, 4 bytes each)"),
        (Encoded("x", (3,), np.dtype("<i4"), values=[1, 2], values_label="contents.int_contents"),
         "x contents.int_contents has 2 numbers; shape [3] needs 3"),
        (Encoded("input", (1,), F32, data=b"\0" * 4, values=[1.0]), "not both"),
        (Encoded("input", (1,), F32), "input: neither data nor values is set"),
        (Encoded("input", (1, -1), F32), "input shape [1, -1] has a negative dimension"),
        (Encoded("input", (2**31,), F32, data=b""), "has a dimension over 2^31 - 1"),
    ],
    ids=["bytes", "numbers", "both", "neither", "negative", "huge"],
)  # fmt: skip
def test_contents_that_do_not_fit_are_refused_by_name(tensor: Encoded, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        tensor.decode()
