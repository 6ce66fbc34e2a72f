"""Keras model files read with h5py and the standard library (no TensorFlow, no Keras):
the Sequential layer list and each layer's weight arrays, in Keras's own layout.

- `.keras` (Keras 3): a zip of config.json, metadata.json and model.weights.h5, whose groups
  are `layers/<snake_case class><_counter>` in layer order (not the config's names).
- legacy `.h5` (Keras 3 and tf.keras 2.x): root attributes `model_config` and
  `keras_version`; `model_weights/<layer name>` with ordered `weight_names` (attributes
  Keras may split into `name0`, `name1`, ... when large).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py  # type: ignore[import-untyped]
import numpy as np

Weights = dict[str, list[np.ndarray]]  # "cell" (or "forward"/"backward", "dense") -> arrays


class KerasError(Exception):
    """A file or model this reader cannot map; the message says what and what to do."""


@dataclass(frozen=True)
class KerasLayer:
    class_name: str
    name: str
    config: dict[str, Any]
    weights: Weights = field(default_factory=dict)


@dataclass(frozen=True)
class KerasModel:
    layers: list[KerasLayer]
    keras_version: str
    file_format: str  # ".keras" or ".h5"

    @property
    def keras_2(self) -> bool:
        return self.keras_version.startswith("2.")


def read_keras_file(path: Path) -> KerasModel:
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    if h5py.is_hdf5(path):
        return _read_h5(path)
    raise KerasError("neither a .keras archive (zip) nor an HDF5 .h5 file")


def _sequential(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers in order: a Sequential model's, or a Functional model's when they form a
    chain (one input, each layer taking the one before it, one output)."""
    kind = config.get("class_name")
    inner = config["config"]
    if kind in ("Functional", "Model"):
        return _chain(inner)
    if kind != "Sequential":
        raise KerasError(
            f"the model is a {kind}: Sequential models and Functional chains are read "
            "(a subclassed model's forward is Python code, which a file does not hold)"
        )
    layers = inner["layers"] if isinstance(inner, dict) else inner  # Keras 2.2: a list
    return [layer for layer in layers if isinstance(layer, dict)]


def _chain(inner: dict[str, Any]) -> list[dict[str, Any]]:
    """A Functional model's layers, refused (naming the layer) unless they form a chain."""
    layers = [layer for layer in inner["layers"] if isinstance(layer, dict)]
    mask_of_input = [layer for layer in layers if _computes_mask_zero(layer, layers)]
    layers = [layer for layer in layers if layer not in mask_of_input]
    previous: str | None = None
    for layer in layers:
        name = layer.get("name") or layer["config"].get("name", "")
        sources = _inbound(layer)
        if layer["class_name"] == "InputLayer":
            if previous is not None:
                raise KerasError(
                    f"the model has several inputs ({previous!r}, {name!r}): one input is read"
                )
        elif sources != [previous]:
            taken = ", ".join(repr(s) for s in sources) or "nothing"
            raise KerasError(
                f"layer {name!r} ({layer['class_name']}) takes {taken}, not just the layer "
                f"before it ({previous!r}): a branch, merge, shared layer or second input is "
                "not read; Functional models are read when their layers form one chain"
            )
        previous = name
    outputs = inner.get("output_layers", [])  # Keras 3, one output: [name, node, tensor]
    names = [outputs[0]] if outputs and isinstance(outputs[0], str) else [o[0] for o in outputs]
    if names != [previous]:
        raise KerasError(
            f"the model's outputs are {names}, not its last layer {previous!r}: one output "
            "from the end of the chain is read"
        )
    return layers


def _computes_mask_zero(layer: dict[str, Any], layers: list[dict[str, Any]]) -> bool:
    """Keras 3 writes Embedding(mask_zero=True)'s mask as a NotEqual(input, 0) layer whose
    result goes to the next layers as `mask`: plumbing of the mask, not a branch."""
    if layer["class_name"] != "NotEqual":
        return False
    args = layer.get("inbound_nodes", [{}])[0]
    inputs = [entry["name"] for entry in layers if entry["class_name"] == "InputLayer"]
    values = args.get("args", []) if isinstance(args, dict) else []
    return _inbound(layer) == inputs[:1] and len(values) == 2 and values[1] == 0


def _inbound(layer: dict[str, Any]) -> list[str]:
    """The layers whose outputs `layer` takes, in the config's Keras 3 or Keras 2 form."""
    names: list[str] = []
    for node in layer.get("inbound_nodes", []):
        if isinstance(node, dict):  # Keras 3: {"args": [keras tensors ...], "kwargs": {...}}
            names += [history[0] for history in _histories(node.get("args", []))]
        else:  # Keras 2: [[name, node index, tensor index, kwargs], ...]
            names += [str(entry[0]) for entry in node]
    return names


def _histories(value: Any) -> list[list[Any]]:
    """Every keras_history in a Keras 3 node's arguments, however nested."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"]]
        return [h for item in value.values() for h in _histories(item)]
    if isinstance(value, list):
        return [h for item in value for h in _histories(item)]
    return []


def _snake(class_name: str) -> str:
    """Keras's own to_snake_case, which names the weight groups of a .keras file."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _read_zip(path: Path) -> KerasModel:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        missing = {"config.json", "model.weights.h5"} - names
        if missing:
            raise KerasError(f"not a Keras 3 archive: no {', '.join(sorted(missing))}")
        config = json.loads(archive.read("config.json"))
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        weights_file = io.BytesIO(archive.read("model.weights.h5"))
    layers: list[KerasLayer] = []
    counters: dict[str, int] = {}
    with h5py.File(weights_file, "r") as h5:
        for layer in _sequential(config):
            class_name, layer_config = layer["class_name"], layer["config"]
            if class_name == "InputLayer":
                layers.append(KerasLayer(class_name, layer_config.get("name", ""), layer_config))
                continue
            base = _snake(class_name)
            count = counters.get(base, 0)
            counters[base] = count + 1
            group = h5.get(f"layers/{base}" + (f"_{count}" if count else ""))
            layers.append(
                KerasLayer(
                    class_name, layer_config.get("name", ""), layer_config, _zip_weights(group)
                )
            )
    return KerasModel(layers, str(metadata.get("keras_version", "3")), ".keras")


def _vars(group: Any) -> list[np.ndarray]:
    if group is None or "vars" not in group:
        return []
    variables = group["vars"]
    return [np.asarray(variables[str(i)], dtype=np.float32) for i in range(len(variables))]


def _zip_weights(group: Any) -> Weights:
    if group is None:
        return {}
    found: Weights = {}
    for part, path in (
        ("cell", "cell"),  # LSTM
        ("forward", "forward_layer/cell"),  # Bidirectional
        ("backward", "backward_layer/cell"),
        ("dense", "layer"),  # TimeDistributed(Dense)
    ):
        arrays = _vars(group[path]) if path in group else []
        if arrays:
            found[part] = arrays
    own = _vars(group)  # Dense
    if own and not found:
        found["dense"] = own
    return found


def _attribute_list(group: Any, name: str) -> list[str]:
    """An attribute Keras may have split into name0, name1, ... when it grew large."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, n = [], 0
        while f"{name}{n}" in group.attrs:
            values += list(group.attrs[f"{name}{n}"])
            n += 1
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _read_h5(path: Path) -> KerasModel:
    with h5py.File(path, "r") as h5:
        if "model_config" not in h5.attrs:
            raise KerasError(
                "this HDF5 file has no model_config: it holds weights only "
                "(save_weights); save the whole model with model.save(path)"
            )
        raw = h5.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        version = h5.attrs.get("keras_version", b"2")
        version = version.decode() if isinstance(version, bytes) else str(version)
        weights_root: Any = h5.get("model_weights", h5)
        stored = set(_attribute_list(weights_root, "layer_names"))
        layers = []
        for layer in _sequential(config):
            class_name, layer_config = layer["class_name"], layer["config"]
            name = layer_config.get("name", "")
            weights = _h5_weights(weights_root[name], class_name) if name in stored else {}
            layers.append(KerasLayer(class_name, name, layer_config, weights))
    return KerasModel(layers, version, ".h5")


def _h5_weights(group: Any, class_name: str) -> Weights:
    """Weight arrays by part, each in Keras's order: kernel, recurrent_kernel, bias."""
    roles: dict[str, dict[str, np.ndarray]] = {}
    for weight_name in _attribute_list(group, "weight_names"):
        leaf = weight_name.rsplit("/", 1)[-1].split(":")[0]
        if "backward" in weight_name:
            part = "backward"
        elif "forward" in weight_name:
            part = "forward"
        else:
            part = "dense" if class_name in ("Dense", "TimeDistributed") else "cell"
        roles.setdefault(part, {})[leaf] = np.asarray(group[weight_name], dtype=np.float32)
    order = ("kernel", "recurrent_kernel", "bias", "embeddings")
    return {
        part: [arrays[role] for role in order if role in arrays] for part, arrays in roles.items()
    }
