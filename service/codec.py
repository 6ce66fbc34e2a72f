"""lstm.v1 protobuf <-> numpy, and the validation of what callers send. Pure functions.

Shared by the server (decode requests, encode responses) and the client (the reverse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lstm.v1 import lstm_pb2 as pb
from service.architecture import Architecture
from service.errors import InvalidArgument

FLOAT32 = np.dtype("<f4")

OUTPUT_NAMES: dict[int, tuple[str, ...]] = {
    pb.OUTPUT_UNSPECIFIED: ("last_hidden",),
    pb.LAST_HIDDEN: ("last_hidden",),
    pb.SEQUENCE: ("sequence",),
    pb.LAST_HIDDEN_AND_SEQUENCE: ("last_hidden", "sequence"),
}


def array_to_tensor(array: np.ndarray) -> pb.Tensor:
    """Raw little-endian float32 bytes: the fast path."""
    array = np.ascontiguousarray(array, dtype=FLOAT32)
    return pb.Tensor(shape=array.shape, data=array.tobytes())


MAX_DIMENSION = 2**31 - 1


def check_dimensions(shape: Sequence[int], field: str) -> None:
    """Each dimension in 0..2^31-1: numpy cannot even describe larger arrays."""
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{field} shape {list(shape)} has a negative dimension")
    if any(d > MAX_DIMENSION for d in shape):
        raise InvalidArgument(f"{field} shape {list(shape)} has a dimension over 2^31 - 1")


def tensor_to_array(tensor: pb.Tensor, field: str) -> np.ndarray:
    """Decodes a Tensor whose data or values match its shape; raises InvalidArgument."""
    shape = tuple(tensor.shape)
    check_dimensions(shape, field)
    count = math.prod(shape)  # Python ints: a huge dimension cannot overflow
    has_data, has_values = len(tensor.data) > 0, len(tensor.values) > 0
    if has_data and has_values:
        raise InvalidArgument(f"{field}: set either data (raw float32 bytes) or values, not both")
    if has_data:
        if len(tensor.data) != 4 * count:
            raise InvalidArgument(
                f"{field}.data has {len(tensor.data)} bytes; shape {list(shape)} needs "
                f"{4 * count} (float32, 4 bytes each)"
            )
        return np.frombuffer(tensor.data, dtype=FLOAT32).reshape(shape)
    if has_values or count == 0:
        if len(tensor.values) != count:
            raise InvalidArgument(
                f"{field}.values has {len(tensor.values)} numbers; shape {list(shape)} needs "
                f"{count}"
            )
        return np.asarray(tensor.values, dtype=np.float32).reshape(shape)
    raise InvalidArgument(f"{field}: neither data nor values is set")


def check_input_shape(
    shape: Sequence[int], arch: Architecture, max_sequence_length: int, max_sequences: int
) -> None:
    """[batch, time, features] against the model and the limits, before bytes are decoded."""
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


def decode_input(
    tensor: pb.Tensor, arch: Architecture, max_sequence_length: int, max_sequences: int
) -> np.ndarray:
    """The request's [batch, time, features] input, checked against the model and limits."""
    check_input_shape(tensor.shape, arch, max_sequence_length, max_sequences)
    return check_finite(tensor_to_array(tensor, "input"))


def decode_lengths(lengths: Sequence[int], batch: int, steps: int) -> np.ndarray:
    """Per-sequence lengths in 1..steps; all `steps` when none are given."""
    if len(lengths) == 0:
        return np.full(batch, steps, dtype=np.int32)
    if len(lengths) != batch:
        raise InvalidArgument(
            f"lengths has {len(lengths)} entries for a batch of {batch}: give one per sequence "
            "or none"
        )
    array = np.asarray(lengths, dtype=np.int32)
    bad = np.flatnonzero((array < 1) | (array > steps))
    if bad.size:
        i = int(bad[0])
        raise InvalidArgument(
            f"lengths[{i}] is {int(array[i])}; each length must be in 1..{steps} (input.shape[1])"
        )
    return array


def requested_outputs(output: int, return_state: bool, layers: int) -> tuple[str, ...]:
    if output not in OUTPUT_NAMES:
        raise InvalidArgument(f"output {output} is not a known Output value")
    states = tuple(f"final_{s}_{k}" for k in range(layers) for s in "hc") if return_state else ()
    return OUTPUT_NAMES[output] + states


def encode_prediction(
    results: dict[str, np.ndarray], model: str, version: int, layers: int
) -> pb.PredictResponse:
    response = pb.PredictResponse(model=model, version=version)
    if "last_hidden" in results:
        response.last_hidden.CopyFrom(array_to_tensor(results["last_hidden"]))
    if "sequence" in results:
        response.sequence.CopyFrom(array_to_tensor(results["sequence"]))
    if "final_h_0" in results:
        for k in range(layers):
            response.state.add(
                layer=k,
                h=array_to_tensor(results[f"final_h_{k}"]),
                c=array_to_tensor(results[f"final_c_{k}"]),
            )
    return response


def describe(
    arch: Architecture,
    name: str,
    version: int,
    loaded_versions: Sequence[int],
    provider: str,
    limits: pb.BatchingLimits,
) -> pb.ModelDescription:
    return pb.ModelDescription(
        name=name,
        version=version,
        loaded_versions=loaded_versions,
        input_size=arch.input_size,
        output_size=arch.output_size,
        layers=[
            pb.LayerDescription(
                index=k,
                units=layer.units,
                direction=layer.direction,
                input_size=layer.input_size,
                output_shape=[-1, -1, layer.output_size],
                parameters=layer.parameters,
                keras_parameters=layer.keras_parameters,
            )
            for k, layer in enumerate(arch.layers)
        ],
        execution_provider=provider,
        batching=limits,
        weights_sha256=arch.weights_sha256,
        exporter=arch.exporter,
        created=arch.created,
    )
