"""What every request is checked for before it is queued, whatever protocol it came by.

Pure functions raising InvalidArgument with a message the caller can act on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstm_serving.contract import PREDICTION, STATE_PARTS, Architecture, initial_state
from lstm_serving.core.masking import Compaction, compact, masked_steps
from lstm_serving.core.requests import InferRequest, OutputSet, SequenceStep
from lstm_serving.core.settings import Settings
from lstm_serving.core.tensors import shape_text
from lstm_serving.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Limits:
    """What one request may carry and ask for (the --max-* flags of the same names)."""

    max_sequence_length: int = 2048
    max_request_sequences: int = 1024
    max_request_steps: int = 2**62
    max_message_bytes: int = 2**62  # an answer larger than this could not be sent

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_sequence_length,
            settings.max_request_sequences,
            settings.max_request_steps,
            settings.max_message_bytes,
        )


def check_input_shape(shape: Sequence[int], arch: Architecture, limits: Limits) -> int:
    """[batch, time, features] (or token ids [batch, time]) against the model and the limits;
    returns its sequence-steps (batch x time: what its compute time and memory grow with)."""
    max_sequences, max_sequence_length = limits.max_request_sequences, limits.max_sequence_length
    rank = 2 if arch.takes_tokens else 3
    if len(shape) != rank:
        raise InvalidArgument(
            f"input shape {shape_text(shape)} has rank {len(shape)}; {_takes(arch)}"
        )
    shape = list(shape)
    batch, steps = shape[:2]
    features = shape[2] if rank == 3 else arch.input_size
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
    if batch * steps > limits.max_request_steps:
        raise ResourceExhausted(
            f"input is {batch} sequences x {steps} time steps = {batch * steps} sequence-steps; "
            f"the limit is {limits.max_request_steps} per request (--max-request-steps): send "
            "fewer sequences per request"
        )
    return batch * steps


def _takes(arch: Architecture) -> str:
    """What the model takes, as a refusal says it."""
    if arch.embedding is not None:
        return (
            f"this model takes token ids [batch, time] (int64 or int32, each in 0.."
            f"{arch.embedding.vocabulary - 1}), not float features"
        )
    return f"this model takes float32 features [batch, time, {arch.input_size}], not token ids"


def check_kind(dtype: np.dtype, arch: Architecture) -> None:
    """Token ids to a text model, float features to any other; refused by what it takes."""
    if (dtype.kind in "iu") != arch.takes_tokens:
        raise InvalidArgument(f"input is {dtype.name}: {_takes(arch)}")


def check_tokens(ids: np.ndarray, vocabulary: int) -> np.ndarray:
    """Token ids in 0..vocabulary-1, as int64; the first one outside named by row and step."""
    outside = (ids < 0) | (ids >= vocabulary)
    if outside.any():
        row, step = (int(v) for v in np.argwhere(outside)[0])
        raise InvalidArgument(
            f"input[{row}] step {step} is token id {int(ids[row, step])}, outside this model's "
            f"vocabulary (0..{vocabulary - 1})"
        )
    return ids.astype(np.int64, copy=False)


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
    known = arch.output_shapes
    for name in outputs:
        if name == PREDICTION and arch.head is None:
            raise InvalidArgument(
                f"this model has no head, so no {PREDICTION!r}: it was exported without a "
                f"Dense/Linear layer; ask for {', '.join(known)}"
            )
        if name not in known:
            raise InvalidArgument(f"unknown output {name!r}: this model has {', '.join(known)}")
    if len(set(outputs)) != len(outputs):
        raise InvalidArgument("an output is requested twice")
    return tuple(outputs)


def check_initial_states(
    states: dict[str, np.ndarray] | None, arch: Architecture, batch: int
) -> dict[str, np.ndarray] | None:
    """Every layer's (h, c) as [directions, batch, units] float32, finite; or none at all."""
    if not states:
        return None
    expected = arch.state_inputs()
    missing = [name for name in expected if name not in states]
    if missing or len(states) != len(expected):
        raise InvalidArgument(
            f"initial state: give (h, c) for each of the model's {len(arch.layers)} layers or "
            f"none; missing {', '.join(missing) or 'nothing'}, given {', '.join(sorted(states))}"
        )
    checked = {}
    for k, layer in enumerate(arch.layers):
        shape = (layer.directions, batch, layer.units)
        for part in STATE_PARTS:
            name = initial_state(k, part)
            array = states[name]
            if array.shape != shape:
                raise InvalidArgument(
                    f"initial state {name} has shape {list(array.shape)}; layer {k} needs "
                    f"{list(shape)} ([directions, batch, units])"
                )
            if not np.isfinite(array).all():
                raise InvalidArgument(f"initial state {name} holds NaN or Inf")
            checked[name] = np.asarray(array, dtype=np.float32)
    return checked


def answer_bytes(names: Sequence[str], arch: Architecture, batch: int, steps: int) -> int:
    """The bytes of the named outputs for `batch` sequences of `steps` steps."""
    total, shapes = 0, arch.output_shapes
    for name in names:
        sizes = iter((batch, steps))  # output_shapes' -1s: batch, then time
        total += math.prod(next(sizes) if d == -1 else d for d in shapes[name])
    return total * FLOAT_BYTES


# What an answer holds besides its numbers: field tags, shapes, output and model names, the
# version. With the request's echoed bytes (a v2 id), the answer's size is known before the
# run, and no answer is serialized to be measured.
ANSWER_FRAMING = 4096


@dataclass(frozen=True, slots=True)
class Sized:
    """A request whose shape and answer passed, its contents not yet read: what it asks for
    and what it costs (admission and the answer budget are decided from this)."""

    batch: int
    steps: int
    outputs: tuple[str, ...]
    answer_bytes: int  # the answer's numbers (framing aside)


def size_request(request: InferRequest, arch: Architecture, limits: Limits) -> Sized:
    """The request's shape, kind and output names against the model and the limits, and its
    answer's size from them (no answer is serialized to be measured)."""
    check_input_shape(request.inputs.shape, arch, limits)
    check_kind(request.inputs.dtype, arch)
    batch, steps = request.inputs.shape[:2]
    outputs = check_outputs(output_names(request, arch), arch)
    answer = answer_bytes(outputs, arch, batch, steps)
    size = answer + request.echoed + ANSWER_FRAMING
    if size > limits.max_message_bytes:
        raise ResourceExhausted(
            f"the answer ({', '.join(outputs)} for {batch} sequences x {steps} steps) would be "
            f"{size} bytes, over the {limits.max_message_bytes} a message may hold "
            "(--max-message-bytes): ask for fewer outputs or send fewer sequences per request"
        )
    return Sized(batch, steps, outputs, answer)


def check_request(request: InferRequest, arch: Architecture, sized: Sized) -> Checked:
    """A sized request's contents decoded and checked: inputs, lengths, initial states."""
    if arch.embedding is not None:
        inputs = check_tokens(request.inputs.decode(), arch.embedding.vocabulary)
    else:
        inputs = check_finite(request.inputs.decode())
    lengths = check_lengths(request.lengths, sized.batch, sized.steps)
    compaction = None
    if arch.masks:
        inputs, lengths, compaction = compact(inputs, lengths, masked_steps(inputs, arch))
    initial = check_initial_states(request.initial_states, arch, sized.batch)
    return Checked(inputs, lengths, sized.outputs, initial, compaction)


def output_names(request: InferRequest, arch: Architecture) -> tuple[str, ...]:
    """The outputs a request asks for, sets expanded and the extras it flags added."""
    if request.outputs is OutputSet.ALL:
        names = tuple(arch.output_shapes)
    elif request.outputs is OutputSet.DEFAULT:
        names = arch.default_outputs()
    else:
        names = request.outputs
    extra = arch.state_outputs() if request.with_states else ()
    extra += (PREDICTION,) if request.with_prediction else ()
    return names + tuple(n for n in extra if n not in names)


@dataclass(frozen=True, slots=True)
class Checked:
    """A request as the batcher runs it."""

    inputs: np.ndarray
    lengths: np.ndarray
    outputs: tuple[str, ...]
    initial: dict[str, np.ndarray] | None
    compaction: Compaction | None = None  # a Masking model's: where its steps go back


def check_sequence_step(step: SequenceStep, arch: Architecture, checked: Checked) -> None:
    """A server-held sequence's step: one sequence, a model whose state can be carried."""
    if step.id in (0, ""):
        raise InvalidArgument('sequence id 0 and "" mean no sequence: choose another id')
    if checked.inputs.shape[0] != 1:
        raise InvalidArgument(
            f"a step of {step.describe()} holds one sequence (input shape[0] == 1), not "
            f"{checked.inputs.shape[0]}: send the others as their own sequences"
        )
    if not arch.carries_state:
        raise FailedPrecondition(
            "this model has a backward layer (bidirectional or go_backwards), which needs the "
            "whole sequence at once, so its state cannot be carried across calls; send whole "
            "sequences"
        )
    if checked.initial is not None and not step.start:
        raise InvalidArgument(
            f"an initial state is for a sequence's start: {step.describe()} carries its own state"
        )
