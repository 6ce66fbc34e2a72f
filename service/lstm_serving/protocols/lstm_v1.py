"""lstm.v1 protobuf <-> numpy: tensors, requests into the data plane, results back. No grpc.

Shared by the server (decode requests, encode responses) and the client (the reverse).
The checks against the model and the limits are the data plane's (`core.validation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from lstm_serving.contract import (
    BOTH,
    INPUT,
    LAST_HIDDEN,
    OUTPUT_CHOICES,
    PREDICTION,
    SEQUENCE,
    Architecture,
    final_state,
    initial_state,
)
from lstm_serving.core.requests import (
    ANYONE,
    Caller,
    InferRequest,
    InferResult,
    OutputSet,
    SequenceStep,
)
from lstm_serving.core.tensors import Encoded, check_rank
from lstm_serving.errors import InvalidArgument
from lstm_serving.proto.v1 import lstm_pb2 as pb

FLOAT32 = np.dtype("<f4")
INT64 = np.dtype("<i8")
TOKENS_FIELD: Final = "tokens"  # PredictRequest's token ids
# The Output enum <-> the contract's output choices (the one table of both directions).
OUTPUT_ENUM: dict[str, int] = {
    LAST_HIDDEN: pb.LAST_HIDDEN,
    SEQUENCE: pb.SEQUENCE,
    BOTH: pb.LAST_HIDDEN_AND_SEQUENCE,
    PREDICTION: pb.PREDICTION,
}
_CHOICE_OF_ENUM = {value: choice for choice, value in OUTPUT_ENUM.items()}
# PredictResponse's tensor fields, each named as the output it holds
_TENSOR_FIELDS = (LAST_HIDDEN, SEQUENCE, PREDICTION)
# PredictRequest fields named like tensors
SEQUENCE_FIELD: Final = "sequence"  # not a tensor name
INITIAL_STATE_FIELD: Final = "initial_state"  # not a tensor name


def fill_tensor(tensor: pb.Tensor, array: np.ndarray) -> pb.Tensor:
    """`array` as raw little-endian float32 bytes, written into `tensor`, a field of the
    message being built: a message given to a constructor is copied whole (serialized and
    parsed), a field filled in place is not."""
    array = np.ascontiguousarray(array, dtype=FLOAT32)
    tensor.shape.extend(array.shape)
    tensor.data = array.tobytes()
    return tensor


def encoded(tensor: pb.Tensor, field: str) -> Encoded:
    """A Tensor as sent, for the one decoder (`Encoded.decode`), which checks it fits its shape."""
    check_rank(len(tensor.shape), field)
    return Encoded(
        field,
        tuple(tensor.shape),
        FLOAT32,
        data=tensor.data if tensor.data else None,
        values=tensor.values if len(tensor.values) else None,
    )


def tokens_to_tensor(ids: np.ndarray) -> pb.TokenTensor:
    """Token ids as raw little-endian int64 bytes."""
    ids = np.ascontiguousarray(ids, dtype=INT64)
    return pb.TokenTensor(shape=ids.shape, data=ids.tobytes())


def encoded_tokens(tokens: pb.TokenTensor) -> Encoded:
    """Token ids as sent, for the one decoder."""
    check_rank(len(tokens.shape), TOKENS_FIELD)
    return Encoded(
        TOKENS_FIELD,
        tuple(tokens.shape),
        INT64,
        data=tokens.data if tokens.data else None,
        values=tokens.values if len(tokens.values) else None,
    )


def tensor_to_array(tensor: pb.Tensor, field: str) -> np.ndarray:
    """Decodes a Tensor whose data or values match its shape; raises InvalidArgument."""
    return encoded(tensor, field).decode()


def decode_predict(
    request: pb.PredictRequest, deadline: float | None, caller: Caller = ANYONE
) -> InferRequest:
    has_input, has_tokens = request.HasField(INPUT), request.HasField(TOKENS_FIELD)
    if not has_input and not has_tokens:
        raise InvalidArgument(
            "input is not set: send a [batch, time, features] float32 Tensor, or token ids "
            "[batch, time] in tokens for a text model"
        )
    if has_input and has_tokens:
        raise InvalidArgument("input and tokens are both set: a model takes one or the other")
    if request.output != pb.OUTPUT_UNSPECIFIED and request.output not in _CHOICE_OF_ENUM:
        raise InvalidArgument(f"output {request.output} is not a known Output value")
    outputs: tuple[str, ...] | OutputSet = (
        OutputSet.DEFAULT
        if request.output == pb.OUTPUT_UNSPECIFIED
        else OUTPUT_CHOICES[_CHOICE_OF_ENUM[request.output]]
    )
    lengths = request.lengths
    return InferRequest(
        model=request.model,
        version=request.version,
        inputs=encoded(request.input, INPUT) if has_input else encoded_tokens(request.tokens),
        lengths=np.asarray(lengths, dtype=np.int32) if len(lengths) else None,
        outputs=outputs,
        with_states=request.return_state,
        with_prediction=request.return_prediction,
        deadline=deadline,
        initial_states=decode_states(request.initial_state, INITIAL_STATE_FIELD),
        sequence=_sequence(request.sequence) if in_sequence(request) else None,
        caller=caller,
    )


def in_sequence(request: pb.PredictRequest) -> bool:
    """Whether the call is a step of a server-held sequence."""
    return request.HasField(SEQUENCE_FIELD)


def decode_states(states: Sequence[pb.LayerState], field: str) -> dict[str, np.ndarray] | None:
    """LayerState messages -> contract initial_state names; None when there are none."""
    decoded: dict[str, np.ndarray] = {}
    for state in states:
        for part, tensor in (("h", state.h), ("c", state.c)):
            name = initial_state(state.layer, part)
            if name in decoded:
                raise InvalidArgument(f"{field} gives layer {state.layer} twice")
            decoded[name] = tensor_to_array(tensor, f"{field}[layer {state.layer}].{part}")
    return decoded or None


def add_states(states: Any, arrays: dict[str, np.ndarray], layers: int) -> None:
    """Final states (final_state names) or initial ones (initial_state names), added to
    `states` (a repeated LayerState field) in place."""
    for k in range(layers):
        for h, c in ((name(k, "h"), name(k, "c")) for name in (final_state, initial_state)):
            if h in arrays:
                state = states.add(layer=k)
                fill_tensor(state.h, arrays[h])
                fill_tensor(state.c, arrays[c])


def _sequence(sequence: pb.Sequence) -> SequenceStep:
    which = sequence.WhichOneof("id")
    if which is None:
        raise InvalidArgument("sequence has no id: set sequence.number or sequence.text")
    return SequenceStep(getattr(sequence, which), sequence.start, sequence.end)


def encode_prediction(result: InferResult) -> pb.PredictResponse:
    arrays = result.outputs
    response = pb.PredictResponse(model=result.model, version=result.version)
    for name in _TENSOR_FIELDS:
        if name in arrays:
            fill_tensor(getattr(response, name), arrays[name])
    if any(name not in _TENSOR_FIELDS for name in arrays):  # final states too
        add_states(response.state, arrays, len(result.architecture.layers))
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
                activations=layer.activations,
                no_bias=not layer.bias,
            )
            for k, layer in enumerate(arch.layers)
        ],
        execution_provider=provider,
        batching=limits,
        weights_sha256=arch.weights_sha256,
        exporter=arch.exporter,
        created=arch.created,
        source=arch.source,
        head=None
        if arch.head is None
        else pb.HeadDescription(
            units=arch.head.units,
            activation=arch.head.activation,
            per_step=arch.head.per_step,
            parameters=arch.head.parameters,
            input=arch.head.reads,
            hidden=[pb.DenseLayer(name=n, units=u, activation=a) for n, u, a in arch.head.hidden],
            name=arch.head.name,
        ),
        mask_value=arch.mask_value,
        embedding=None
        if arch.embedding is None
        else pb.EmbeddingDescription(
            vocabulary=arch.embedding.vocabulary,
            width=arch.embedding.width,
            padding_id=arch.embedding.padding_id,
            mask_zero=arch.embedding.mask_zero,
        ),
    )
