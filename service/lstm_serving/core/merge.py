"""One batch from many requests and back: pad and concatenate, then split the run's outputs.

Apart from the queue (`batching`) so the merge/split rules sit in one place, next to the
contract's batch axes. Lengths travel with the batch as `sequence_lens`, so padding never
changes a row's answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lstm_serving.contract import batch_axis

Arrays = dict[str, np.ndarray]


States = dict[str, np.ndarray]  # contract.initial_state names -> [directions, batch, units]


@dataclass(slots=True)
class Part:
    """One request's share of a batch (the batcher's queued request is one)."""

    inputs: np.ndarray  # [b, t, F] float32, or token ids [b, t] int64
    lengths: np.ndarray  # [b]
    initial: States | None  # None: zeros


def merge(parts: Sequence[Part]) -> tuple[np.ndarray, np.ndarray, States | None]:
    """Requests -> one [B, T, F] input, [B] lengths, and [d, B, units] initial states (None
    when every request starts from zeros; zeros for the rows of those that do).

    T is the longest *length* in the batch, not the longest time axis sent.
    """
    if len(parts) == 1:
        lengths = parts[0].lengths.astype(np.int32, copy=False)
    else:
        lengths = np.concatenate([part.lengths for part in parts]).astype(np.int32)
    time_steps = int(lengths.max())
    initial = _merge_states(parts)
    if len(parts) == 1 and parts[0].inputs.shape[1] == time_steps:
        return np.ascontiguousarray(parts[0].inputs), lengths, initial
    rest, dtype = parts[0].inputs.shape[2:], parts[0].inputs.dtype  # features, or none: tokens
    inputs = np.zeros((lengths.shape[0], time_steps, *rest), dtype=dtype)
    start = 0
    for part in parts:
        rows, steps = part.inputs.shape[0], min(time_steps, part.inputs.shape[1])
        inputs[start : start + rows, :steps] = part.inputs[:, :steps]
        start += rows
    return inputs, lengths, initial


def _merge_states(parts: Sequence[Part]) -> States | None:
    given = next((part.initial for part in parts if part.initial is not None), None)
    if given is None:
        return None
    if len(parts) == 1:
        return given
    return {
        name: np.concatenate(
            [
                part.initial[name]
                if part.initial is not None
                else np.zeros((like.shape[0], part.inputs.shape[0], like.shape[2]), np.float32)
                for part in parts
            ],
            axis=batch_axis(name),
        )
        for name, like in given.items()
    }


def check_rows(results: Mapping[str, np.ndarray], rows: int) -> None:
    """Every output holds exactly one row per sequence of the batch (else no one is answered)."""
    for name, array in results.items():
        if array.shape[batch_axis(name)] != rows:
            raise RuntimeError(f"{name} has {array.shape[batch_axis(name)]} rows for {rows}")


def split(
    results: Mapping[str, np.ndarray], outputs: Sequence[str], start: int, rows: int, steps: int
) -> Arrays:
    """One request's rows [start, start + rows) of `outputs`; outputs with a time axis restored
    to the request's own `steps` (zeros past each length)."""
    own: Arrays = {}
    for name in outputs:
        array = results[name]
        if batch_axis(name) == 0 and array.ndim == 3:  # [batch, time, units]: sequence, a
            # per-step prediction
            sequence = np.zeros((rows, steps, array.shape[2]), dtype=np.float32)
            shared = min(steps, array.shape[1])
            sequence[:, :shared] = array[start : start + rows, :shared]
            own[name] = sequence
        else:
            index = [slice(None)] * array.ndim
            index[batch_axis(name)] = slice(start, start + rows)
            own[name] = np.ascontiguousarray(array[tuple(index)])
    return own
