"""A Keras Sequential stacked LSTM -> a ModelSpec, and the NumPy reference it is verified by.

Layers: InputLayer, LSTM, Bidirectional(LSTM) (merge_mode concat), Masking, Dropout-like
layers (identity at inference), and one final Dense or TimeDistributed(Dense) head. Anything
else is refused with a message naming the layer, the option and what is supported.
Keras stores gates i, f, c, o and one bias; ONNX wants i, o, f, c with W = kernel.T,
R = recurrent_kernel.T and B = [bias, zeros].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.keras_files import KerasError, KerasLayer, KerasModel, read_keras_file
from lstm_export.keras_reference import KerasForward, RefHead, RefLayer
from lstm_export.spec import HEAD_ACTIVATIONS, Activation, Head, LstmLayer, ModelSpec
from lstm_export.torch_source import onnx_gates

__all__ = ["KerasError", "read_keras", "weights_of"]

IDENTITY = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout"}
SUPPORTED = (
    "InputLayer, LSTM, Bidirectional(LSTM), Masking, Dropout, SpatialDropout1D, GaussianNoise, "
    "GaussianDropout, AlphaDropout, and a final Dense or TimeDistributed(Dense)"
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
    arrays = [a for layer in spec.layers for a in (layer.W, layer.R, layer.B)]
    if spec.head is not None:
        arrays += [spec.head.kernel] + ([] if spec.head.bias is None else [spec.head.bias])
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


def _head(layer: KerasLayer, per_step: bool) -> tuple[Head, RefHead]:
    config = (
        layer.config["layer"]["config"] if layer.class_name == "TimeDistributed" else layer.config
    )
    activation = _name(config.get("activation", "linear"))
    if activation not in HEAD_ACTIVATIONS:
        raise KerasError(
            f"layer {layer.name!r} (Dense): activation={activation!r}; supported for the head: "
            f"{', '.join(HEAD_ACTIVATIONS)}"
        )
    arrays = layer.weights.get("dense", [])
    if not arrays:
        raise KerasError(f"layer {layer.name!r}: no weights found in the file")
    bias = arrays[1] if len(arrays) > 1 else None
    head_input = "every-step" if per_step else "final-states"
    return Head(arrays[0], bias, activation, head_input), RefHead(
        arrays[0], bias, activation, per_step
    )


def _map(model: KerasModel) -> tuple[ModelSpec, KerasForward]:
    layers: list[LstmLayer] = []
    refs: list[RefLayer] = []
    head: tuple[Head, RefHead] | None = None
    mask_value: float | None = None
    notes: list[str] = []
    returns_sequences = True
    for layer in model.layers:
        kind, config = layer.class_name, layer.config
        if kind == "InputLayer" or kind in IDENTITY:
            continue
        if head is not None:
            raise KerasError(
                f"layer {layer.name!r} ({kind}) follows the Dense head: the head "
                "must be the last layer with weights"
            )
        if kind == "Masking":
            if layers:
                raise KerasError(f"Masking layer {layer.name!r} must come before the first LSTM")
            mask_value = float(config.get("mask_value", 0.0))
        elif kind in ("LSTM", "Bidirectional"):
            if layers and not returns_sequences:
                raise KerasError(
                    f"layer {layer.name!r} follows an LSTM with return_sequences=False: only "
                    "the last LSTM may return its final state alone"
                )
            if kind == "Bidirectional":
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
                spec_layer, ref = _lstm(
                    layer, lstm_config, ["forward", "backward"], model.keras_2, notes
                )
            else:
                lstm_config = config
                spec_layer, ref = _lstm(layer, config, ["cell"], model.keras_2, notes)
            returns_sequences = bool(lstm_config.get("return_sequences", False))
            layers.append(spec_layer)
            refs.append(ref)
        elif kind in ("Dense", "TimeDistributed"):
            if not layers:
                raise KerasError(f"layer {layer.name!r} ({kind}) comes before any LSTM")
            if kind == "TimeDistributed" and config["layer"].get("class_name") != "Dense":
                raise KerasError(
                    f"layer {layer.name!r}: TimeDistributed({config['layer'].get('class_name')}); "
                    "only TimeDistributed(Dense) is supported"
                )
            if kind == "TimeDistributed" and not returns_sequences:
                raise KerasError(
                    f"layer {layer.name!r}: TimeDistributed after return_sequences=False"
                )
            head = _head(layer, per_step=returns_sequences)
        else:
            raise KerasError(
                f"layer {layer.name!r} is a {kind}, which this exporter does not map; "
                f"supported: {SUPPORTED}"
            )
    if not layers:
        raise KerasError("the model has no LSTM layer")
    source = f"keras {model.keras_version} {model.file_format}"
    spec = ModelSpec(layers, None if head is None else head[0], mask_value, source, notes)
    reference = KerasForward(refs, None if head is None else head[1])
    return spec, reference
