"""The architecture record that the export stage writes into a model's ONNX metadata.

It is what lets the server (and anyone else) describe a model without guessing from the graph.
Torch-free and onnxruntime-free, so the exporter, the server and the client all share it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

METADATA_KEY = "lstm_serving.architecture"
FORMAT_VERSION = 1


def parameter_count(input_size: int, units: int, directions: int, *, keras: bool = False) -> int:
    """Weights of one LSTM layer: 4 gates x (input + recurrent) + biases.

    PyTorch and ONNX store two bias vectors per gate block (input and recurrent); Keras one.
    """
    biases = 4 * units * (1 if keras else 2)
    return directions * (4 * units * input_size + 4 * units * units + biases)


@dataclass(frozen=True)
class LayerSpec:
    units: int
    direction: str  # "forward" or "bidirectional"
    input_size: int
    parameters: int
    keras_parameters: int

    @property
    def directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def output_size(self) -> int:
        return self.directions * self.units


@dataclass(frozen=True)
class Architecture:
    input_size: int
    layers: tuple[LayerSpec, ...]
    opset: int
    exporter: str = ""
    torch_version: str = ""
    created: str = ""
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION

    @classmethod
    def build(
        cls,
        input_size: int,
        units: list[int],
        bidirectional: bool,
        opset: int,
        *,
        exporter: str = "",
        torch_version: str = "",
        created: str = "",
        weights_sha256: str = "",
    ) -> Architecture:
        """Derives every layer's input size and parameter counts from the widths."""
        directions = 2 if bidirectional else 1
        direction = "bidirectional" if bidirectional else "forward"
        layers, width = [], input_size
        for h in units:
            layers.append(
                LayerSpec(
                    units=h,
                    direction=direction,
                    input_size=width,
                    parameters=parameter_count(width, h, directions),
                    keras_parameters=parameter_count(width, h, directions, keras=True),
                )
            )
            width = directions * h
        return cls(
            input_size=input_size,
            layers=tuple(layers),
            opset=opset,
            exporter=exporter,
            torch_version=torch_version,
            created=created,
            weights_sha256=weights_sha256,
        )

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    @property
    def bidirectional(self) -> bool:
        return self.layers[0].direction == "bidirectional"

    @property
    def parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers)

    @property
    def keras_parameters(self) -> int:
        return sum(layer.keras_parameters for layer in self.layers)

    def to_json(self) -> str:
        record = asdict(self)
        record["output_size"] = self.output_size
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        """Parses the metadata record; raises ValueError naming what is wrong."""
        try:
            record = json.loads(text)
            layers = tuple(LayerSpec(**layer) for layer in record.pop("layers"))
            record.pop("output_size", None)
            arch = cls(layers=layers, **record)
        except (TypeError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed {METADATA_KEY} metadata: {exc}") from exc
        if not arch.layers:
            raise ValueError(f"malformed {METADATA_KEY} metadata: no layers")
        if arch.format_version > FORMAT_VERSION:
            raise ValueError(
                f"{METADATA_KEY} format {arch.format_version} is newer than this server "
                f"understands ({FORMAT_VERSION}): upgrade lstm-serving"
            )
        return arch

    def summary(self) -> str:
        """A Keras-style table: what each layer receives and returns, and its parameters."""
        rows = [("Layer", "Receives", "Output shape", "Params (stored)", "Params (Keras)")]
        rows.append(("input", "", f"(None, None, {self.input_size})", "", ""))
        for k, layer in enumerate(self.layers):
            kind = "LSTM" if layer.direction == "forward" else "Bidirectional(LSTM)"
            rows.append(
                (
                    f"lstm_{k}: {kind}({layer.units})",
                    f"(None, None, {layer.input_size})",
                    f"(None, None, {layer.output_size})",
                    f"{layer.parameters:,}",
                    f"{layer.keras_parameters:,}",
                )
            )
        rows.append(("Total", "", "", f"{self.parameters:,}", f"{self.keras_parameters:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        rule = "-" * len(max(lines, key=len))
        outputs = (
            f"Outputs: last_hidden (None, {self.output_size}), "
            f"sequence (None, None, {self.output_size}); None = any batch or time"
        )
        return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1], outputs])
