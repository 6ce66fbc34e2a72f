"""A Keras stacked LSTM (Sequential, or a Functional chain) -> a ModelSpec, and the NumPy
reference it is verified by.

Layers: InputLayer, Embedding (first; mask_zero), Masking, LSTM, Bidirectional(LSTM)
(merge_mode concat), then pooling over time and any number of Dense or TimeDistributed(Dense)
layers; Dropout-like layers (identity at inference) anywhere. Anything else is refused with a
message naming the layer, the option and what is supported.
Keras stores gates i, f, c, o and one bias; ONNX wants i, o, f, c with W = kernel.T,
R = recurrent_kernel.T and B = [bias, zeros].
Over 250 lines: every Keras layer kind's mapping beside the others, so what is read and what
is refused reads as one list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.keras_files import KerasError, KerasLayer, KerasModel, read_keras_file
from lstm_export.keras_reference import KerasForward, RefDense, RefHead, RefLayer
from lstm_export.spec import (
    HEAD_ACTIVATIONS,
    Activation,
    Dense,
    Embedding,
    Head,
    LstmLayer,
    ModelSpec,
)
from lstm_export.torch_source import onnx_gates

__all__ = ["KerasError", "read_keras", "weights_of"]

IDENTITY = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout"}
SUPPORTED = (
    "InputLayer, Embedding, Masking, LSTM, Bidirectional(LSTM), then GlobalAveragePooling1D or "
    "GlobalMaxPooling1D and any Dense or TimeDistributed(Dense) layers; Dropout, "
    "SpatialDropout1D, GaussianNoise, GaussianDropout and AlphaDropout anywhere"
)
LSTM_ACTIVATIONS = (
    "tanh",
    "sigmoid",
    "hard_sigmoid",
    "relu",
    "linear",
    "softsign",
    "softplus",
    "elu",
)


def read_keras(path: Path) -> tuple[ModelSpec, KerasForward]:
    """The model's spec for the graph writer, and its Keras forward pass for verification."""
    model = read_keras_file(path)
    spec, reference = _map(model)
    return spec, reference


def weights_of(spec: ModelSpec) -> list[np.ndarray]:
    arrays = [] if spec.embedding is None else [spec.embedding.table]
    arrays += [a for layer in spec.layers for a in (layer.W, layer.R, layer.B)]
    for dense in () if spec.head is None else spec.head.dense_layers:
        arrays += [dense.kernel] + ([] if dense.bias is None else [dense.bias])
    return arrays


def _name(value: Any) -> str:
    """An activation as the config writes it: a string, or a serialized function."""
    if isinstance(value, dict):
        value = value.get("config", value.get("class_name", ""))
    return str(value or "linear")


def _activation(name: str, layer: KerasLayer, option: str, keras_2: bool) -> Activation:
    onnx = {
        "tanh": Activation("Tanh"),
        "sigmoid": Activation("Sigmoid"),
        # Keras 3: relu6(x + 3) / 6; Keras 2: clip(0.2 x + 0.5)
        "hard_sigmoid": Activation("HardSigmoid", 0.2 if keras_2 else 1 / 6, 0.5),
        "relu": Activation("Relu"),
        "linear": Activation("Affine", 1.0, 0.0),
        "softsign": Activation("Softsign"),
        "softplus": Activation("Softplus"),
        "elu": Activation("Elu", 1.0),
    }
    if name not in onnx:
        raise KerasError(
            f"layer {layer.name!r} ({layer.class_name}): {option}={name!r} cannot be expressed "
            f"by ONNX's LSTM operator; supported: {', '.join(LSTM_ACTIVATIONS)}"
        )
    return onnx[name]


def _check_lstm_options(layer: KerasLayer, config: dict[str, Any], notes: list[str]) -> None:
    for option in ("return_state", "time_major"):
        if config.get(option):
            raise KerasError(
                f"layer {layer.name!r} ({layer.class_name}): {option}=True is not supported "
                f"(set it to False; the server returns each layer's state on request)"
            )
    if config.get("stateful"):
        notes.append(
            f"layer {layer.name!r} is stateful=True: exported as stateless; to carry state "
            "across calls use the server's sequences (README: State across calls)"
        )


def _direction_weights(
    arrays: list[np.ndarray], units: int, layer: KerasLayer
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Keras kernel [in, 4H], recurrent [H, 4H], bias [4H] -> ONNX W, R, B of one direction."""
    if len(arrays) not in (2, 3) or arrays[1].shape != (units, 4 * units):
        shapes = [list(a.shape) for a in arrays]
        raise KerasError(f"layer {layer.name!r}: unexpected LSTM weights {shapes}")
    kernel, recurrent = arrays[0], arrays[1]
    bias = arrays[2] if len(arrays) == 3 else np.zeros(4 * units, np.float32)
    b = np.concatenate([onnx_gates(bias), np.zeros(4 * units, np.float32)])
    return onnx_gates(kernel.T), onnx_gates(recurrent.T), b, len(arrays) == 3


def _lstm(
    layer: KerasLayer, config: dict[str, Any], parts: list[str], keras_2: bool, notes: list[str]
) -> tuple[LstmLayer, RefLayer]:
    _check_lstm_options(layer, config, notes)
    units = int(config["units"])
    gates = _activation(
        _name(config.get("recurrent_activation", "sigmoid")), layer, "recurrent_activation", keras_2
    )
    cell = _activation(_name(config.get("activation", "tanh")), layer, "activation", keras_2)
    missing = [part for part in parts if part not in layer.weights]
    if missing:
        raise KerasError(f"layer {layer.name!r}: no weights found in the file ({missing})")
    w, r, b, has_bias = zip(
        *(_direction_weights(layer.weights[part], units, layer) for part in parts), strict=True
    )
    if len(parts) == 2:
        direction = "bidirectional"
    else:
        direction = "reverse" if config.get("go_backwards") else "forward"
    spec = LstmLayer(np.stack(w), np.stack(r), np.stack(b), direction, gates, cell, has_bias[0])
    reference = RefLayer(
        [layer.weights[part] for part in parts],
        direction,
        _name(config.get("recurrent_activation", "sigmoid")),
        _name(config.get("activation", "tanh")),
        keras_2,
    )
    return spec, reference


def _dense(layer: KerasLayer) -> tuple[Dense, RefDense]:
    """A Dense (or TimeDistributed(Dense)) layer's weights and activation."""
    inner = layer.config["layer"] if layer.class_name == "TimeDistributed" else None
    if inner is not None and inner.get("class_name") != "Dense":
        raise KerasError(
            f"layer {layer.name!r}: TimeDistributed({inner.get('class_name')}); only "
            "TimeDistributed(Dense) is supported"
        )
    config = layer.config if inner is None else inner["config"]
    activation = _name(config.get("activation", "linear"))
    if activation not in HEAD_ACTIVATIONS:
        raise KerasError(
            f"layer {layer.name!r} (Dense): activation={activation!r}; supported after the "
            f"LSTMs: {', '.join(HEAD_ACTIVATIONS)}"
        )
    arrays = layer.weights.get("dense", [])
    if not arrays:
        raise KerasError(f"layer {layer.name!r}: no weights found in the file")
    bias = arrays[1] if len(arrays) > 1 else None
    return Dense(arrays[0], bias, activation, layer.name), RefDense(arrays[0], bias, activation)


def _head(dense: list[tuple[Dense, RefDense]], head_input: str) -> tuple[Head, RefHead]:
    *hidden, last = [spec for spec, _ in dense]
    head = Head(last.kernel, last.bias, last.activation, head_input, tuple(hidden), last.name)
    return head, RefHead([ref for _, ref in dense], head_input)


POOLING = {"GlobalAveragePooling1D": "mean", "GlobalMaxPooling1D": "max"}
OTHER_RECURRENT = {  # recurrent layers that are not an LSTM, named as what they are
    "GRU": "a gated recurrent unit, not an LSTM",
    "SimpleRNN": "a plain RNN, not an LSTM",
    "ConvLSTM1D": "a convolutional LSTM, whose gates are convolutions",
    "ConvLSTM2D": "a convolutional LSTM, whose gates are convolutions",
    "RNN": "a generic RNN wrapping a custom cell",
}


def _map(model: KerasModel) -> tuple[ModelSpec, KerasForward]:
    layers: list[LstmLayer] = []
    refs: list[RefLayer] = []
    dense: list[tuple[Dense, RefDense]] = []
    embedding: Embedding | None = None
    pooling: str | None = None
    mask_value: float | None = None
    notes: list[str] = []
    returns_sequences = True
    for layer in model.layers:
        kind, config = layer.class_name, layer.config
        if kind == "InputLayer" or kind in IDENTITY:
            continue
        if kind == "Embedding":
            if layers or mask_value is not None or embedding is not None:
                raise KerasError(f"Embedding layer {layer.name!r} must be the first layer")
            embedding = _embedding(layer)
        elif kind == "Masking":
            if embedding is not None:
                raise KerasError(
                    f"Masking layer {layer.name!r} after an Embedding: use mask_zero=True"
                )
            if layers:
                raise KerasError(f"Masking layer {layer.name!r} must come before the first LSTM")
            mask_value = float(config.get("mask_value", 0.0))
        elif kind in ("LSTM", "Bidirectional"):
            if dense or pooling:
                raise KerasError(
                    f"layer {layer.name!r} ({kind}) follows a Dense or pooling layer: the LSTMs "
                    "must come first, then pooling and Dense layers"
                )
            if layers and not returns_sequences:
                raise KerasError(
                    f"layer {layer.name!r} follows an LSTM with return_sequences=False: only "
                    "the last LSTM may return its final state alone"
                )
            spec_layer, ref, returns_sequences = _recurrent(layer, model.keras_2, notes)
            layers.append(spec_layer)
            refs.append(ref)
        elif kind in POOLING:
            if not layers or not returns_sequences or dense or pooling:
                raise KerasError(
                    f"layer {layer.name!r} ({kind}) must directly follow an LSTM with "
                    "return_sequences=True"
                )
            if config.get("data_format", "channels_last") != "channels_last":
                raise KerasError(
                    f"layer {layer.name!r} ({kind}): data_format must be channels_last"
                )
            pooling = POOLING[kind]
        elif kind in ("Dense", "TimeDistributed"):
            if not layers:
                raise KerasError(f"layer {layer.name!r} ({kind}) comes before any LSTM")
            if kind == "TimeDistributed" and (not returns_sequences or pooling):
                raise KerasError(
                    f"layer {layer.name!r}: TimeDistributed needs a sequence (an LSTM with "
                    "return_sequences=True, no pooling)"
                )
            dense.append(_dense(layer))
        elif kind in OTHER_RECURRENT:
            raise KerasError(
                f"layer {layer.name!r} is a {kind} ({OTHER_RECURRENT[kind]}): lstm-serving "
                "serves LSTMs only (retrain with keras.layers.LSTM to serve it here)"
            )
        else:
            raise KerasError(
                f"layer {layer.name!r} is a {kind}, which this exporter does not map; "
                f"supported: {SUPPORTED}"
            )
    if not layers:
        raise KerasError("the model has no LSTM layer")
    if pooling == "max" and mask_value is not None:
        raise KerasError(
            "GlobalMaxPooling1D ignores the mask: Keras takes the max over every step, the "
            "values its LSTM writes at masked steps included, which this server does not "
            "reproduce; use GlobalAveragePooling1D (which skips masked steps) or drop Masking"
        )
    if pooling and not dense:
        raise KerasError(
            "the model ends in a pooling layer: a Dense layer after it is read (the pooled "
            "vector alone is not an output here)"
        )
    head_input = pooling or ("every-step" if returns_sequences else "final-states")
    head = _head(dense, head_input) if dense else None
    source = f"keras {model.keras_version} {model.file_format}"
    spec = ModelSpec(
        layers, None if head is None else head[0], mask_value, source, notes, embedding
    )
    table = None if embedding is None else embedding.table
    reference = KerasForward(refs, None if head is None else head[1], table)
    return spec, reference


def _embedding(layer: KerasLayer) -> Embedding:
    """Keras's Embedding: its table, and mask_zero (id 0 is a masked step)."""
    arrays = layer.weights.get("dense") or layer.weights.get("cell") or []
    if len(arrays) != 1 or arrays[0].ndim != 2:
        raise KerasError(f"layer {layer.name!r} (Embedding): no embedding table found in the file")
    mask_zero = bool(layer.config.get("mask_zero", False))
    return Embedding(arrays[0], 0 if mask_zero else None, mask_zero)


def _recurrent(
    layer: KerasLayer, keras_2: bool, notes: list[str]
) -> tuple[LstmLayer, RefLayer, bool]:
    """An LSTM or Bidirectional(LSTM) layer, and whether it returns its sequence."""
    config = layer.config
    if layer.class_name == "LSTM":
        spec_layer, ref = _lstm(layer, config, ["cell"], keras_2, notes)
        return spec_layer, ref, bool(config.get("return_sequences", False))
    inner = config["layer"]
    if inner.get("class_name") != "LSTM":
        raise KerasError(
            f"layer {layer.name!r}: Bidirectional({inner.get('class_name')}); "
            "only Bidirectional(LSTM) is supported"
        )
    merge = config.get("merge_mode", "concat")
    if merge != "concat":
        raise KerasError(
            f"layer {layer.name!r}: Bidirectional merge_mode={merge!r}; supported: "
            "'concat' (rebuild with merge_mode='concat')"
        )
    lstm_config = inner["config"]
    if lstm_config.get("go_backwards"):
        raise KerasError(f"layer {layer.name!r}: Bidirectional of a go_backwards LSTM")
    spec_layer, ref = _lstm(layer, lstm_config, ["forward", "backward"], keras_2, notes)
    return spec_layer, ref, bool(lstm_config.get("return_sequences", False))
