"""Merge and split on their own: padding to the longest length, states zero-filled for the
requests that sent none, each request's rows back with its own time axis."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serving.core.merge import Part, check_rows, merge, split

RNG = np.random.default_rng(5)


def _part(rows: int, steps: int, lengths: list[int], states: bool = False) -> Part:
    inputs = RNG.standard_normal((rows, steps, 2)).astype(np.float32)
    initial = None
    if states:
        initial = {"initial_h_0": RNG.standard_normal((1, rows, 3)).astype(np.float32)}
    return Part(inputs, np.array(lengths, np.int32), initial)


def test_one_request_whose_time_is_its_longest_length_is_not_copied() -> None:
    part = _part(2, 4, [4, 2])
    inputs, lengths, initial = merge([part])
    assert inputs is part.inputs and initial is None
    np.testing.assert_array_equal(lengths, [4, 2])


def test_padded_to_the_longest_length_not_the_longest_time_axis() -> None:
    """A request may send more steps than its lengths use: the batch is only as long as the
    longest length, and each request's valid steps are where they were."""
    a, b = _part(1, 6, [3]), _part(2, 2, [2, 1])
    inputs, lengths, initial = merge([a, b])
    assert inputs.shape == (3, 3, 2) and initial is None
    np.testing.assert_array_equal(lengths, [3, 2, 1])
    np.testing.assert_array_equal(inputs[0], a.inputs[0, :3])
    np.testing.assert_array_equal(inputs[1:, :2], b.inputs)
    assert not inputs[1:, 2].any()  # padding is zeros


def test_states_are_zeros_for_the_requests_that_sent_none() -> None:
    a, b = _part(1, 2, [2]), _part(2, 2, [2, 2], states=True)
    _, _, initial = merge([a, b])
    assert initial is not None
    state = initial["initial_h_0"]
    assert state.shape == (1, 3, 3)  # [directions, batch, units]: rows on axis 1
    assert not state[:, 0].any()
    assert b.initial is not None
    np.testing.assert_array_equal(state[:, 1:], b.initial["initial_h_0"])


def test_split_gives_each_request_its_rows_and_its_own_time_axis() -> None:
    results = {
        "last_hidden": np.arange(3 * 4, dtype=np.float32).reshape(3, 4),
        "sequence": np.ones((3, 3, 4), np.float32),
        "final_h_0": np.arange(3 * 4, dtype=np.float32).reshape(1, 3, 4),
    }
    check_rows(results, 3)
    own = split(results, ["last_hidden", "sequence", "final_h_0"], start=1, rows=2, steps=5)
    np.testing.assert_array_equal(own["last_hidden"], results["last_hidden"][1:3])
    np.testing.assert_array_equal(own["final_h_0"], results["final_h_0"][:, 1:3])
    assert own["sequence"].shape == (2, 5, 4)  # the request's 5 steps, not the batch's 3
    assert own["sequence"][:, :3].all() and not own["sequence"][:, 3:].any()
    shorter = split(results, ["sequence"], start=0, rows=1, steps=2)["sequence"]
    assert shorter.shape == (1, 2, 4)


def test_a_run_that_lost_a_row_answers_no_one() -> None:
    with pytest.raises(RuntimeError, match="final_c_1 has 2 rows for 3"):
        check_rows({"last_hidden": np.zeros((3, 4)), "final_c_1": np.zeros((1, 2, 4))}, 3)
