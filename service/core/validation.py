"""What every request is checked for before it is queued, whatever protocol it came by.

Pure functions raising InvalidArgument with a message the caller can act on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lstm_serving.contract import Architecture
from lstm_serving.core.requests import InferRequest
from lstm_serving.errors import InvalidArgument

MAX_DIMENSION = 2**31 - 1


def check_dimensions(shape: Sequence[int], field: str) -> None:
    """Each dimension in 0..2^31-1: numpy cannot even describe larger arrays."""
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{field} shape {list(shape)} has a negative dimension")
    if any(d > MAX_DIMENSION for d in shape):
        raise InvalidArgument(f"{field} shape {list(shape)} has a dimension over 2^31 - 1")


def check_input_shape(
    shape: Sequence[int], arch: Architecture, max_sequence_length: int, max_sequences: int
) -> None:
    """[batch, time, features] against the model and the limits."""
    shape = list(shape)
    if len(shape) != 3:
        raise InvalidArgument(
            f"input shape {shape} has rank {len(shape)}; expected [batch, time, {arch.input_size}]"
        )
    batch, steps, features = shape
    if batch == 0:
        raise InvalidArgument("input is an empty batch (shape[0] == 0): send >= 1 sequence")
    if batch > max_sequences:
        raise InvalidArgument(
            f"input shape[0] is {batch} sequences; the limit is {max_sequences} per request "
            "(--max-request-sequences): split it"
        )
    if steps == 0:
        raise InvalidArgument("input has no time steps (shape[1] == 0)")
    if features != arch.input_size:
        raise InvalidArgument(
            f"input shape[2] is {features} features; this model takes {arch.input_size}"
        )
    if steps > max_sequence_length:
        raise InvalidArgument(
            f"input shape[1] is {steps} time steps; the limit is {max_sequence_length} "
            "(--max-sequence-length)"
        )


def check_finite(array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        raise InvalidArgument(f"input holds NaN or Inf (first at index {bad})")
    return array


def check_lengths(lengths: np.ndarray | None, batch: int, steps: int) -> np.ndarray:
    """Per-sequence lengths in 1..steps as int32; all `steps` when none are given."""
    if lengths is None or len(lengths) == 0:
        return np.full(batch, steps, dtype=np.int32)
    if lengths.ndim != 1:
        raise InvalidArgument(f"lengths has shape {list(lengths.shape)}; expected [batch]")
    if len(lengths) != batch:
        raise InvalidArgument(
            f"lengths has {len(lengths)} entries for a batch of {batch}: give one per sequence "
            "or none"
        )
    bad = np.flatnonzero((lengths < 1) | (lengths > steps))
    if bad.size:
        i = int(bad[0])
        raise InvalidArgument(
            f"lengths[{i}] is {int(lengths[i])}; each length must be in 1..{steps} (input.shape[1])"
        )
    return lengths.astype(np.int32, copy=False)


def check_outputs(outputs: Sequence[str], arch: Architecture) -> tuple[str, ...]:
    """Names the model has, each once."""
    known = arch.output_shapes()
    for name in outputs:
        if name not in known:
            raise InvalidArgument(f"unknown output {name!r}: this model has {', '.join(known)}")
    if len(set(outputs)) != len(outputs):
        raise InvalidArgument("an output is requested twice")
    return tuple(outputs)


def check_request(
    request: InferRequest, arch: Architecture, max_sequence_length: int, max_sequences: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The request's inputs, lengths and output names, each checked; what the batcher runs."""
    check_input_shape(request.inputs.shape, arch, max_sequence_length, max_sequences)
    inputs = check_finite(request.inputs.decode())
    batch, steps, _ = inputs.shape
    lengths = check_lengths(request.lengths, batch, steps)
    names = tuple(arch.output_shapes()) if request.outputs is None else request.outputs
    if request.with_states:
        names += tuple(n for n in arch.state_outputs() if n not in names)
    return inputs, lengths, check_outputs(names, arch)
