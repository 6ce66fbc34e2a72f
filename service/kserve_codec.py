"""KServe v2 (Open Inference Protocol) protobuf <-> numpy, and its validation. Pure functions.

Model mapping: inputs `input` FP32 [-1, -1, F] and optional `lengths` INT32 [-1]; outputs
`last_hidden`, `sequence`, `final_h_{k}`, `final_c_{k}`. Inputs come raw
(`raw_input_contents`, little-endian) or typed (`fp32_contents` / `int_contents`); outputs go
back raw. The checks on shapes, lengths and values are the lstm.v1 codec's, shared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstm.kserve.v2 import grpc_predict_v2_pb2 as v2
from service import codec
from service.architecture import Architecture
from service.errors import InvalidArgument, NotFound

PLATFORM = "onnxruntime_onnx"
_DTYPES = {"FP32": np.dtype("<f4"), "INT32": np.dtype("<i4")}
_CONTENTS = {"FP32": "fp32_contents", "INT32": "int_contents"}
_INPUT_DTYPES = {"input": "FP32", "lengths": "INT32"}


@dataclass(frozen=True)
class InferCall:
    inputs: np.ndarray  # [batch, time, features] float32
    lengths: np.ndarray  # [batch] int32
    outputs: tuple[str, ...]  # in the order the response lists them


def output_shapes(arch: Architecture) -> dict[str, list[int]]:
    """Every output the model has, -1 for batch and time."""
    shapes = {"last_hidden": [-1, arch.output_size], "sequence": [-1, -1, arch.output_size]}
    for k, layer in enumerate(arch.layers):
        for s in "hc":
            shapes[f"final_{s}_{k}"] = [layer.directions, -1, layer.units]
    return shapes


def parse_version(version: str) -> int:
    """v2 versions are strings; "" means the newest."""
    if version == "":
        return 0
    if not version.isdigit() or int(version) == 0:
        raise NotFound(f"model version {version!r} does not exist: versions are integers >= 1")
    return int(version)


def _decode_tensor(tensor: v2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    name, dtype = tensor.name, tensor.datatype
    if "shared_memory_region" in tensor.parameters:
        raise InvalidArgument(
            f"input {name!r} uses shared memory, which this server does not "
            "support: send raw_input_contents or typed contents"
        )
    expected = _INPUT_DTYPES[name]
    if dtype != expected:
        raise InvalidArgument(f"input {name!r} has datatype {dtype!r}; expected {expected}")
    shape = list(tensor.shape)
    codec.check_dimensions(shape, f"input {name!r}")
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count * 4:
            raise InvalidArgument(
                f"input {name!r} raw contents hold {len(raw)} bytes; shape {shape} of "
                f"{dtype} needs {count * 4}"
            )
        return np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(shape)
    values = getattr(tensor.contents, _CONTENTS[dtype])
    if len(values) != count:
        raise InvalidArgument(
            f"input {name!r} contents.{_CONTENTS[dtype]} hold {len(values)} values; shape "
            f"{shape} needs {count}"
        )
    return np.asarray(values, dtype=_DTYPES[dtype]).reshape(shape)


def decode_infer_request(
    request: v2.ModelInferRequest,
    arch: Architecture,
    max_sequence_length: int,
    max_sequences: int,
) -> InferCall:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "give one per input, in order"
        )
    tensors: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name not in _INPUT_DTYPES:
            raise InvalidArgument(
                f"unknown input {tensor.name!r}: this model takes 'input' (FP32 "
                f"[batch, time, {arch.input_size}]) and optionally 'lengths' (INT32 [batch])"
            )
        if tensor.name in tensors:
            raise InvalidArgument(f"input {tensor.name!r} is given twice")
        if raw and tensor.HasField("contents"):
            raise InvalidArgument(
                f"input {tensor.name!r} sets contents while raw_input_contents is used"
            )
        if tensor.name == "input":
            codec.check_input_shape(tensor.shape, arch, max_sequence_length, max_sequences)
        tensors[tensor.name] = _decode_tensor(tensor, raw[i] if raw else None)
    if "input" not in tensors:
        raise InvalidArgument(f"input 'input' (FP32 [batch, time, {arch.input_size}]) is missing")
    inputs = codec.check_finite(tensors["input"])
    lengths: Sequence[int] = []
    if "lengths" in tensors:
        if tensors["lengths"].ndim != 1:
            raise InvalidArgument(
                f"input 'lengths' has shape {list(tensors['lengths'].shape)}; expected [batch]"
            )
        lengths = tensors["lengths"].tolist()
    known = output_shapes(arch)
    outputs = tuple(o.name for o in request.outputs) or tuple(known)
    for name in outputs:
        if name not in known:
            raise InvalidArgument(f"unknown output {name!r}: this model has {', '.join(known)}")
    if len(set(outputs)) != len(outputs):
        raise InvalidArgument("an output is requested twice")
    return InferCall(
        inputs, codec.decode_lengths(lengths, inputs.shape[0], inputs.shape[1]), outputs
    )


def encode_infer_response(
    results: dict[str, np.ndarray],
    outputs: Sequence[str],
    model: str,
    version: int,
    request_id: str,
) -> v2.ModelInferResponse:
    response = v2.ModelInferResponse(model_name=model, model_version=str(version), id=request_id)
    for name in outputs:
        array = np.ascontiguousarray(results[name], dtype=_DTYPES["FP32"])
        response.outputs.add(name=name, datatype="FP32", shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


def model_metadata(
    name: str, versions: Sequence[int], arch: Architecture
) -> v2.ModelMetadataResponse:
    tensor = v2.ModelMetadataResponse.TensorMetadata
    return v2.ModelMetadataResponse(
        name=name,
        versions=[str(v) for v in versions],
        platform=PLATFORM,
        inputs=[
            tensor(name="input", datatype="FP32", shape=[-1, -1, arch.input_size]),
            tensor(name="lengths", datatype="INT32", shape=[-1]),
        ],
        outputs=[tensor(name=n, datatype="FP32", shape=s) for n, s in output_shapes(arch).items()],
    )
