"""Masking on its own: unmasked steps moved first, and the per-step outputs put back where
Keras answers them (tests/unit/export/test_keras.py compares with Keras itself)."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serving.core.masking import compact, restore
from lstm_serving.errors import InvalidArgument
from tests.helpers import architecture


def _rows(*masked: list[int], time: int = 5) -> np.ndarray:
    x = np.arange(1, len(masked) * time * 2 + 1, dtype=np.float32).reshape(len(masked), time, 2)
    for row, steps in enumerate(masked):
        x[row, steps] = 0.0
    return x


def zeros_masked(x: np.ndarray) -> np.ndarray:
    """Steps whose features are all 0.0, as a Masking(0.0) model sees them."""
    return np.asarray((x == 0.0).all(axis=2))


def test_token_ids_move_as_features_do() -> None:
    ids = np.array([[0, 0, 5, 7], [3, 0, 4, 0]], np.int64)
    moved, lengths, _ = compact(ids, np.array([4, 4], np.int32), ids == 0)
    assert moved.tolist() == [[5, 7, 0, 0], [3, 4, 0, 0]] and lengths.tolist() == [2, 2]


def test_unmasked_steps_run_first_with_their_count_as_the_length() -> None:
    x = _rows([0, 1], [2], [])
    moved, lengths, _ = compact(x, np.array([5, 5, 3], np.int32), zeros_masked(x))
    assert lengths.tolist() == [3, 4, 3]  # row 2: its length, not its time axis
    np.testing.assert_array_equal(moved[0, :3], x[0, 2:])
    np.testing.assert_array_equal(moved[1, :4], x[1, [0, 1, 3, 4]])
    assert not moved[0, 3:].any() and not moved[1, 4:].any()


def test_rows_already_in_order_are_not_copied() -> None:
    x = _rows([4], [3, 4])
    moved, lengths, _ = compact(x, np.array([5, 5], np.int32), zeros_masked(x))
    assert moved is x and lengths.tolist() == [4, 3]


def test_outputs_go_back_carried_forward_or_zero_as_the_last_layer_answers() -> None:
    x = _rows([0, 2], time=4)
    _, lengths, compaction = compact(x, np.array([4], np.int32), zeros_masked(x))
    run = np.array([[[1.0], [3.0], [0.0], [0.0]]], np.float32)  # steps 1 and 3, run first
    forward = restore({"sequence": run.copy()}, compaction, architecture(2, [1]))
    assert forward["sequence"][0, :, 0].tolist() == [0.0, 1.0, 1.0, 3.0]  # carried, zeros first
    both = restore({"sequence": run.copy()}, compaction, architecture(2, [1], bidirectional=True))
    assert both["sequence"][0, :, 0].tolist() == [0.0, 1.0, 0.0, 3.0]  # zeros where masked
    assert lengths.tolist() == [2]


def test_a_row_masked_everywhere_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"input\[1\] is masked at every step"):
        x = _rows([], [0, 1, 2, 3, 4])
        compact(x, np.array([5, 5], np.int32), zeros_masked(x))
