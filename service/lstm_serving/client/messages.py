"""lstm.v1 messages as the client builds and reads them: numpy in, numpy out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

import numpy as np

from lstm_serving.contract import LAST_HIDDEN, LENGTHS, OUTPUT_CHOICES, PREDICTION, SEQUENCE
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.protocols.lstm_v1 import (
    INITIAL_STATE_FIELD,
    OUTPUT_ENUM,
    fill_tensor,
    tensor_to_array,
    tokens_to_tensor,
)


@dataclass
class Prediction:
    model: str
    version: int
    last_hidden: np.ndarray | None = None  # [batch, units]
    sequence: np.ndarray | None = None  # [batch, time, units]
    prediction: np.ndarray | None = None  # the head's output: [batch, units] or per step
    states: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (h, c) per layer


LayerStates = Sequence[tuple[np.ndarray, np.ndarray]]  # (h, c) per layer, as Prediction.states


class PredictOptions(TypedDict, total=False):
    lengths: Sequence[int] | np.ndarray | None  # per sequence, in 1..time; None: all `time`
    output: str | None  # "last_hidden", "sequence", "both", "prediction"; None: the model's own
    return_prediction: bool  # also the head's output
    version: int  # 0 (default): the newest
    return_state: bool  # also each layer's final (h, c)
    initial_state: LayerStates | None  # continue from these (a Prediction's states); None: 0
    sequence_id: int | str | None  # a step of this server-held sequence (batch 1)
    sequence_start: bool  # its first step
    sequence_end: bool  # its last step: the server frees its state


def predict_request(
    model: str, inputs: np.ndarray, **options: Unpack[PredictOptions]
) -> pb.PredictRequest:
    output, lengths = options.get("output"), options.get(LENGTHS)
    if output is not None and output not in OUTPUT_CHOICES:
        raise ValueError(f"output must be one of {', '.join(OUTPUT_CHOICES)}, got {output!r}")
    tokens = np.asarray(inputs).dtype.kind in "iu"  # integer ids: a text model's input
    request = pb.PredictRequest(
        model=model,
        version=options.get("version", 0),
        tokens=tokens_to_tensor(inputs) if tokens else None,
        lengths=[] if lengths is None else [int(n) for n in lengths],
        output=OUTPUT_ENUM.get(output or "", pb.OUTPUT_UNSPECIFIED),  # type: ignore[arg-type]
        return_state=options.get("return_state", False),
        return_prediction=options.get("return_prediction", False),
    )
    if not tokens:  # filled in place: a Tensor given to the constructor would be copied
        fill_tensor(request.input, inputs)
    for k, (h, c) in enumerate(options.get(INITIAL_STATE_FIELD) or ()):
        state = request.initial_state.add(layer=k)
        fill_tensor(state.h, h)
        fill_tensor(state.c, c)
    sequence_id = options.get("sequence_id")
    if sequence_id is not None:
        request.sequence.start = options.get("sequence_start", False)
        request.sequence.end = options.get("sequence_end", False)
        if isinstance(sequence_id, str):
            request.sequence.text = sequence_id
        else:
            request.sequence.number = sequence_id
    return request


AFFINITY_HEADER = "x-lstm-sequence-id"  # what a load balancer hashes to keep a sequence together


def affinity(sequence_id: int | str | None) -> tuple[tuple[str, str], ...]:
    """The metadata that routes a unary step of a server-held sequence to its replica."""
    return () if sequence_id is None else ((AFFINITY_HEADER, str(sequence_id)),)


def prediction(response: pb.PredictResponse) -> Prediction:
    result = Prediction(response.model, response.version)
    if response.HasField(LAST_HIDDEN):
        result.last_hidden = tensor_to_array(response.last_hidden, LAST_HIDDEN)
    if response.HasField(SEQUENCE):
        result.sequence = tensor_to_array(response.sequence, SEQUENCE)
    if response.HasField(PREDICTION):
        result.prediction = tensor_to_array(response.prediction, PREDICTION)
    result.states = [
        (tensor_to_array(s.h, "state.h"), tensor_to_array(s.c, "state.c")) for s in response.state
    ]
    return result
