"""One batch from many requests and back: pad and concatenate, then split the run's outputs.

Apart from the queue (`batching`) so the merge/split rules sit in one place, next to the
contract's batch axes. Lengths travel with the batch as `sequence_lens`, so padding never
changes a row's answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lstm_serving.contract import SEQUENCE, batch_axis

Arrays = dict[str, np.ndarray]


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [b, t, F], lengths [b]) per request -> one [B, T, F] and [B].

    T is the longest *length* in the batch, not the longest time axis sent.
    """
    lengths = np.concatenate([part_lengths for _, part_lengths in parts]).astype(np.int32)
    time_steps = int(lengths.max())
    if len(parts) == 1 and parts[0][0].shape[1] == time_steps:
        return np.ascontiguousarray(parts[0][0], dtype=np.float32), lengths
    inputs = np.zeros((lengths.shape[0], time_steps, parts[0][0].shape[2]), dtype=np.float32)
    start = 0
    for part_inputs, _ in parts:
        rows, steps = part_inputs.shape[0], min(time_steps, part_inputs.shape[1])
        inputs[start : start + rows, :steps] = part_inputs[:, :steps]
        start += rows
    return inputs, lengths


def check_rows(results: Mapping[str, np.ndarray], rows: int) -> None:
    """Every output holds exactly one row per sequence of the batch (else no one is answered)."""
    for name, array in results.items():
        if array.shape[batch_axis(name)] != rows:
            raise RuntimeError(f"{name} has {array.shape[batch_axis(name)]} rows for {rows}")


def split(
    results: Mapping[str, np.ndarray], outputs: Sequence[str], start: int, rows: int, steps: int
) -> Arrays:
    """One request's rows [start, start + rows) of `outputs`; the sequence output restored to
    the request's own `steps` (zeros past each length)."""
    own: Arrays = {}
    for name in outputs:
        array = results[name]
        if name == SEQUENCE:
            sequence = np.zeros((rows, steps, array.shape[2]), dtype=np.float32)
            shared = min(steps, array.shape[1])
            sequence[:, :shared] = array[start : start + rows, :shared]
            own[name] = sequence
        else:
            index = [slice(None)] * array.ndim
            index[batch_axis(name)] = slice(start, start + rows)
            own[name] = np.ascontiguousarray(array[tuple(index)])
    return own
