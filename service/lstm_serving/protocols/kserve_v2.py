"""KServe v2 (Open Inference Protocol) protobuf <-> numpy. No grpc.

Model mapping: inputs `input` FP32 [-1, -1, F], optional `lengths` INT32 [-1] and optional
`initial_h_{k}` / `initial_c_{k}` FP32 [directions, -1, units]; outputs `last_hidden`,
`sequence`, `final_h_{k}`, `final_c_{k}` (names from `contract`). Inputs come raw
(`raw_input_contents`, little-endian) or typed (`fp32_contents` / `int_contents`); outputs go
back raw. Server-held sequences as Triton reads them: parameters `sequence_id` (int64, uint64
or string; 0 or "" is none), `sequence_start`, `sequence_end` (bool). The checks against the
model and the limits are the data plane's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from lstm_serving.contract import (
    INPUT,
    LENGTHS,
    STATE_PARTS,
    Architecture,
    initial_state,
    is_initial_state,
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
from lstm_serving.errors import InvalidArgument, NotFound
from lstm_serving.proto.kserve.v2 import grpc_predict_v2_pb2 as v2

PLATFORM = "onnxruntime_onnx"
_DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
_CONTENTS = {"FP32": "fp32_contents", "INT32": "int_contents", "INT64": "int64_contents"}
# what each input may be sent as; which of them `input` must be is the model's to say
_INPUT_DTYPES = {INPUT: ("FP32", "INT64", "INT32"), LENGTHS: ("INT32",)}
_MAX_VERSION_DIGITS = 18  # fits an int64, as lstm.v1's version field


def parse_version(version: str) -> int:
    """v2 versions are strings; "" means the newest. Plain ASCII digits only."""
    if version == "":
        return 0
    digits = version.isascii() and version.isdigit() and len(version) <= _MAX_VERSION_DIGITS
    if not digits or version.startswith("0"):
        raise NotFound(
            f"model version {version[:40]!r} does not exist: versions are integers >= 1 "
            "written in ASCII digits without leading zeros"
        )
    return int(version)


def _check_tensor(tensor: v2.ModelInferRequest.InferInputTensor) -> None:
    name, dtype = tensor.name, tensor.datatype
    if "shared_memory_region" in tensor.parameters:
        raise InvalidArgument(
            f"input {name!r} uses shared memory, which this server does not "
            "support: send raw_input_contents or typed contents"
        )
    expected = _INPUT_DTYPES.get(name, ("FP32",))
    if dtype not in expected:
        raise InvalidArgument(
            f"input {name!r} has datatype {dtype!r}; expected {' or '.join(expected)}"
        )


def _encoded(tensor: v2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> Encoded:
    """An input as sent (raw contents, or typed ones), for the one decoder."""
    check_rank(len(tensor.shape), f"input {tensor.name[:40]!r}")
    dtype = tensor.datatype
    return Encoded(
        f"input {tensor.name!r}",
        tuple(tensor.shape),
        _DTYPES[dtype],
        data=raw,
        values=None if raw is not None else getattr(tensor.contents, _CONTENTS[dtype]),
        data_label="raw contents",
        values_label=f"contents.{_CONTENTS[dtype]}",
    )


def decode_infer_request(
    request: v2.ModelInferRequest, deadline: float | None, caller: Caller = ANYONE
) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "give one per input, in order"
        )
    tensors: dict[str, Encoded] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name not in _INPUT_DTYPES and not is_initial_state(tensor.name):
            raise InvalidArgument(
                f"unknown input {tensor.name!r}: this model takes {INPUT!r} (FP32 "
                f"[batch, time, features], or INT64/INT32 token ids [batch, time] for a text "
                f"model), and optionally {LENGTHS!r} (INT32 [batch]) and "
                "each layer's initial state (FP32 [directions, batch, units], named as the "
                "final_h_K / final_c_K outputs but initial_)"
            )
        if tensor.name in tensors:
            raise InvalidArgument(f"input {tensor.name!r} is given twice")
        if raw and tensor.HasField("contents"):
            raise InvalidArgument(
                f"input {tensor.name!r} sets contents while raw_input_contents is used"
            )
        _check_tensor(tensor)
        tensors[tensor.name] = _encoded(tensor, raw[i] if raw else None)
    if INPUT not in tensors:
        raise InvalidArgument(f"input {INPUT!r} (FP32 [batch, time, features]) is missing")
    states = {name: e.decode() for name, e in tensors.items() if is_initial_state(name)}
    return InferRequest(
        model=request.model_name,
        version=parse_version(request.model_version),
        inputs=tensors[INPUT],
        lengths=tensors[LENGTHS].decode() if LENGTHS in tensors else None,
        outputs=tuple(o.name for o in request.outputs) or OutputSet.ALL,
        deadline=deadline,
        initial_states=states or None,
        sequence=_sequence(request.parameters),
        caller=caller,
        echoed=len(request.id.encode()) if request.id else 0,
    )


def in_sequence(request: v2.ModelInferRequest) -> bool:
    """Whether the call names a server-held sequence (and so who calls matters)."""
    return "sequence_id" in request.parameters


def _sequence(parameters: Mapping[str, v2.InferParameter]) -> SequenceStep | None:
    """Triton's sequence parameters; None when the call is not part of a sequence. A start or
    end flag without an id is refused: run statelessly, its state would be lost silently."""
    flags = {}
    for flag in ("sequence_start", "sequence_end"):
        value = parameters.get(flag)
        if value is not None and value.WhichOneof("parameter_choice") != "bool_param":
            raise InvalidArgument(f"parameter {flag} must be a bool")
        flags[flag] = value is not None and value.bool_param
    sequence_id: int | str = 0
    if "sequence_id" in parameters:
        given = parameters["sequence_id"]
        kind = given.WhichOneof("parameter_choice")
        if kind not in ("int64_param", "uint64_param", "string_param"):
            raise InvalidArgument(f"parameter sequence_id is a {kind}: send an integer or a string")
        sequence_id = getattr(given, kind)
    if sequence_id in (0, ""):
        if any(flags.values()):
            raise InvalidArgument("sequence_start/sequence_end need a sequence_id other than 0")
        return None
    return SequenceStep(sequence_id, flags["sequence_start"], flags["sequence_end"])


def encode_infer_response(
    result: InferResult, request_id: str, response: v2.ModelInferResponse | None = None
) -> v2.ModelInferResponse:
    """The answer, written into `response` (a field of a stream's message: filled in place,
    not copied) or a new message."""
    response = v2.ModelInferResponse() if response is None else response
    response.model_name, response.model_version = result.model, str(result.version)
    response.id = request_id
    arrays = result.outputs
    response.MergeFrom(_described(tuple((name, a.shape) for name, a in arrays.items())))
    response.raw_output_contents.extend(
        [np.ascontiguousarray(a, dtype=_DTYPES["FP32"]).tobytes() for a in arrays.values()]
    )
    return response


@functools.lru_cache(maxsize=1024)
def _described(outputs: tuple[tuple[str, tuple[int, ...]], ...]) -> v2.ModelInferResponse:
    """A response holding only these outputs' names, datatype and shapes, merged into each
    answer of those shapes: a third of the cost of adding them one by one (~2 against ~6 us
    for the seed model's six outputs)."""
    described = v2.ModelInferResponse()
    for name, shape in outputs:
        described.outputs.add(name=name, datatype="FP32", shape=shape)
    return described


def model_metadata(
    name: str, versions: Sequence[int], arch: Architecture
) -> v2.ModelMetadataResponse:
    tensor = v2.ModelMetadataResponse.TensorMetadata
    return v2.ModelMetadataResponse(
        name=name,
        versions=[str(v) for v in versions],
        platform=PLATFORM,
        inputs=[
            tensor(name=INPUT, datatype="INT64", shape=[-1, -1])
            if arch.takes_tokens
            else tensor(name=INPUT, datatype="FP32", shape=[-1, -1, arch.input_size]),
            tensor(name=LENGTHS, datatype="INT32", shape=[-1]),  # optional, as below
            *(
                tensor(name=initial_state(k, part), datatype="FP32", shape=[d, -1, units])
                for k, (d, units) in enumerate((la.directions, la.units) for la in arch.layers)
                for part in STATE_PARTS
            ),
        ],
        outputs=[tensor(name=n, datatype="FP32", shape=s) for n, s in arch.output_shapes.items()],
    )


# The caller's side: one builder and one decoder for every v2 client of ours (the load
# generator, the benchmarks, the tests), so no one spells the tensor layout by hand.


def build_infer_request(
    model: str,
    inputs: np.ndarray,
    lengths: np.ndarray | Sequence[int] | None = None,
    outputs: Sequence[str] = (),
    *,
    version: str = "",
    request_id: str = "",
    initial_states: Mapping[str, np.ndarray] | None = None,
    sequence: SequenceStep | None = None,
) -> v2.ModelInferRequest:
    """A ModelInferRequest with raw little-endian contents: `inputs` [batch, time, features],
    optional `lengths` [batch] and initial states, the outputs asked for (none: all), and
    Triton's sequence parameters for a step of a server-held sequence."""
    request = v2.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    inputs = np.asarray(inputs)
    kind = "INT64" if inputs.dtype.kind in "iu" else "FP32"  # token ids, or features
    tensors: dict[str, tuple[str, np.ndarray]] = {INPUT: (kind, inputs)}
    if lengths is not None:
        tensors[LENGTHS] = ("INT32", np.asarray(lengths))
    for name, state in (initial_states or {}).items():
        tensors[name] = ("FP32", np.asarray(state))
    for name, (datatype, array) in tensors.items():
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.astype(_DTYPES[datatype]).tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    if sequence is not None:
        parameter = request.parameters["sequence_id"]
        if isinstance(sequence.id, str):
            parameter.string_param = sequence.id
        else:
            parameter.int64_param = sequence.id
        request.parameters["sequence_start"].bool_param = sequence.start
        request.parameters["sequence_end"].bool_param = sequence.end
    return request


def decode_infer_response(response: v2.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a ModelInferResponse as an array, by name, in the order sent."""
    return {
        output.name: np.frombuffer(raw, _DTYPES[output.datatype]).reshape(tuple(output.shape))
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
