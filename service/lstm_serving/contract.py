"""The model contract: graph tensor names, which outputs have a batch axis, and the
architecture record that the export stage writes into a model's ONNX metadata.

The exporter writes graphs to it, the server checks and runs them by it, clients name outputs
by it. It imports none of torch, grpc or onnxruntime, and it is the only place a tensor name is
spelled out (a test reads the other modules for string literals). Over 250 lines: the record
and its Keras-style table read best next to the names they describe.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Final, TypeVar

from lstm_serving.tables import table_lines

T = TypeVar("T")
METADATA_KEY = "lstm_serving.architecture"
FORMAT_VERSION = 3

# Graph inputs: [batch, time, features] float32 and [batch] int32 (each in 1..time).
INPUT: Final = "input"
LENGTHS: Final = "lengths"
# Graph outputs: the last layer at each sequence's own last step [batch, units], and at every
# step [batch, time, units] (zeros past each length).
LAST_HIDDEN: Final = "last_hidden"
SEQUENCE: Final = "sequence"
# A model with a head (Keras Dense, PyTorch Linear) also returns what its framework's predict /
# forward returns: [batch, units], or [batch, time, units] for a per-step head.
PREDICTION: Final = "prediction"
STATE_PARTS = ("h", "c")
# What a caller may ask for by name (lstm-client --output, the lstm.v1 Output enum).
BOTH: Final = "both"
OUTPUT_CHOICES: dict[str, tuple[str, ...]] = {
    LAST_HIDDEN: (LAST_HIDDEN,),
    SEQUENCE: (SEQUENCE,),
    BOTH: (LAST_HIDDEN, SEQUENCE),
    PREDICTION: (PREDICTION,),
}


def initial_state(layer: int, part: str) -> str:
    """Graph input of layer `layer`'s initial h or c: [directions, batch, units]."""
    return f"initial_{part}_{layer}"


def final_state(layer: int, part: str) -> str:
    """Graph output of layer `layer`'s final h or c: [directions, batch, units]."""
    return f"final_{part}_{layer}"


def is_initial_state(name: str) -> bool:
    """Whether a graph input name is a layer's initial h or c (any layer)."""
    part, _, layer = name.removeprefix("initial_").partition("_")
    return name.startswith("initial_") and part in STATE_PARTS and layer.isdigit()


def batch_axis(name: str) -> int:
    """Where the batch is in a graph tensor: states are [directions, batch, units]."""
    return 1 if name.startswith(("initial_", "final_")) else 0


def parameter_count(input_size: int, units: int, directions: int, *, keras: bool = False) -> int:
    """Weights of one LSTM layer: 4 gates x (input + recurrent) + biases.

    PyTorch and ONNX store two bias vectors per gate block (input and recurrent); Keras one.
    """
    biases = 4 * units * (1 if keras else 2)
    return directions * (4 * units * input_size + 4 * units * units + biases)


@dataclass(frozen=True)
class LayerSpec:
    units: int
    direction: str  # "forward", "reverse" (Keras go_backwards) or "bidirectional"
    input_size: int
    parameters: int
    keras_parameters: int
    activations: tuple[str, ...] = ()  # ONNX (gates, cell) activations; () = Sigmoid, Tanh
    bias: bool = True  # False: Keras use_bias=False

    @property
    def options(self) -> list[str]:
        """Its options that differ from an LSTM's defaults, as the layer table shows them."""
        shown = []
        if self.activations:
            gates, cell = self.activations
            shown += [f"gates={gates}"] * (gates != "Sigmoid") + [f"cell={cell}"] * (cell != "Tanh")
        return shown + ([] if self.bias else ["use_bias=False"])

    @property
    def directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def output_size(self) -> int:
        return self.directions * self.units


# What a head reads of the last layer, as the PyTorch forward that feeds it reads it, where
# `out, (h_n, c_n) = lstm(x)`; with lengths, each row's own valid steps only.
HEAD_INPUTS: dict[str, str] = {
    "last-step": "out[:, -1]",  # each row's last valid step (bidirectional: both halves there)
    "final-states": "h_n[-1]",  # bidirectional: cat(h_n[-2], h_n[-1]) (Keras's LSTM output)
    "every-step": "out",  # per step: [batch, time, units], zeros past each length
    "mean": "out.mean(1)",  # over each row's valid steps
    "max": "out.max(1).values",  # over each row's valid steps
}


@dataclass(frozen=True)
class HeadSpec:
    """A Dense/Linear layer on the last LSTM layer's output, read as `input` says."""

    units: int
    activation: str  # linear, relu, sigmoid, tanh, softmax
    per_step: bool  # the answer has a time axis (input "every-step")
    parameters: int
    input: str = ""  # a HEAD_INPUTS key; "" in files from before it was recorded
    # its answer for an all-zero input (its activation of its bias): what a per-step Keras head
    # answers at a step its LSTM output zeros for (core.masking)
    at_zero: tuple[float, ...] = ()
    hidden: tuple[tuple[str, int, str], ...] = ()  # Dense layers before its last: name, units,
    # activation
    name: str = ""  # its last layer's, as the source names it ("" in older files: "fc")

    @property
    def reads(self) -> str:
        return self.input or ("every-step" if self.per_step else "final-states")

    def layer_names(self) -> str:
        """Its Dense layers as the table shows them: `dense(25, relu) -> dense_1(1, linear)`;
        a single unnamed one (older files) as `Dense(3, softmax)`."""
        final = (self.name or "Dense", self.units, self.activation)
        return " -> ".join(f"{n}({u}, {a})" for n, u, a in (*self.hidden, final))

    def forward(self, bidirectional: bool) -> str:
        """The head as the PyTorch code it stands for, e.g. `sigmoid(fc(out[:, -1]))`."""
        z = HEAD_INPUTS[self.reads]
        if self.reads == "final-states" and bidirectional:
            z = "cat(h_n[-2], h_n[-1])"
        for name, _, activation in (*self.hidden, (self.name or "fc", self.units, self.activation)):
            z = f"{name}({z})"
            z = z if activation == "linear" else f"{activation}({z})"
        return z


@dataclass(frozen=True)
class EmbeddingSpec:
    """Token ids in front of the LSTMs: a table of `vocabulary` rows of `width` floats, looked
    up in the graph; the model's `input` is then int64 ids [batch, time]."""

    vocabulary: int
    width: int
    padding_id: int | None = None  # PyTorch padding_idx, Keras mask_zero's 0
    mask_zero: bool = False  # Keras mask_zero=True: id 0 is a masked step, skipped anywhere


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
    head: HeadSpec | None = None
    mask_value: float | None = None  # Keras Masking: steps all equal to it are skipped
    source: str = ""  # what the model was exported from (e.g. "keras 3.15.1 .keras")
    embedding: EmbeddingSpec | None = None  # token ids in: a text model

    @property
    def takes_tokens(self) -> bool:
        return self.embedding is not None

    @property
    def masks(self) -> bool:
        """Whether some steps of a request are skipped (Keras Masking or mask_zero)."""
        return self.mask_value is not None or (
            self.embedding is not None and self.embedding.mask_zero
        )

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    @property
    def bidirectional(self) -> bool:
        return self.layers[0].direction == "bidirectional"

    @property
    def carries_state(self) -> bool:
        """Whether chunks with carried state equal the whole: every layer runs forward."""
        return all(layer.direction == "forward" for layer in self.layers)

    @property
    def _outer_parameters(self) -> int:
        """The head's and the embedding's (stored alike by every framework)."""
        head = self.head.parameters if self.head is not None else 0
        e = self.embedding
        return head + (0 if e is None else e.vocabulary * e.width)

    @property
    def parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers) + self._outer_parameters

    @property
    def keras_parameters(self) -> int:
        return sum(layer.keras_parameters for layer in self.layers) + self._outer_parameters

    def state_inputs(self) -> tuple[str, ...]:
        return tuple(initial_state(k, s) for k in range(len(self.layers)) for s in STATE_PARTS)

    def state_outputs(self) -> tuple[str, ...]:
        return tuple(final_state(k, s) for k in range(len(self.layers)) for s in STATE_PARTS)

    def carry(self, outputs: Mapping[str, T]) -> dict[str, T]:
        """The final states among a run's outputs, named as the next run's initial states."""
        return {
            initial_state(k, s): outputs[final_state(k, s)]
            for k in range(len(self.layers))
            for s in STATE_PARTS
        }

    def graph_inputs(self) -> tuple[str, ...]:
        return (INPUT, LENGTHS, *self.state_inputs())

    @cached_property
    def output_shapes(self) -> dict[str, list[int]]:
        """Every graph output and its shape, -1 for batch and time (once per model: every
        request's checks read it)."""
        shapes = {LAST_HIDDEN: [-1, self.output_size], SEQUENCE: [-1, -1, self.output_size]}
        if self.head is not None:
            steps = [-1] if self.head.per_step else []
            shapes[PREDICTION] = [-1, *steps, self.head.units]
        for k, layer in enumerate(self.layers):
            for s in STATE_PARTS:
                shapes[final_state(k, s)] = [layer.directions, -1, layer.units]
        return shapes

    def default_outputs(self) -> tuple[str, ...]:
        """What a call that names no output gets: the head's answer, else the final state."""
        return (PREDICTION,) if self.head is not None else (LAST_HIDDEN,)

    def to_json(self) -> str:
        """Format 1 for what format 1 can say (a server that knows only it still reads the
        file); format 2 adds masking, per-layer activations and the source; format 3 a head (as
        it reads and stacks) and token inputs. An older server refuses a newer file by name."""
        record = asdict(self)
        record["output_size"] = self.output_size
        for key in ("head", "mask_value", "source", "embedding"):
            if record[key] in (None, ""):
                del record[key]
        for layer in record["layers"]:
            if not layer["activations"]:
                del layer["activations"]
            if layer["bias"]:
                del layer["bias"]
        extended = any(k in record for k in ("mask_value", "source")) or any(
            "activations" in layer or layer["direction"] == "reverse" for layer in record["layers"]
        )
        newest = "head" in record or "embedding" in record
        newest |= any("bias" in layer for layer in record["layers"])
        record["format_version"] = 3 if newest else 2 if extended else 1
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        """Parses the metadata record; raises ValueError naming what is wrong."""
        try:
            record = json.loads(text)
            layers = tuple(
                LayerSpec(**{**layer, "activations": tuple(layer.get("activations", ()))})
                for layer in record.pop("layers")
            )
            record.pop("output_size", None)
            head = record.pop("head", None)
            if head is not None:
                hidden = tuple(tuple(layer) for layer in head.get("hidden", ()))
                at_zero = tuple(head.get("at_zero", ()))
                head = HeadSpec(**{**head, "at_zero": at_zero, "hidden": hidden})
            embedding = record.pop("embedding", None)
            if embedding is not None:
                embedding = EmbeddingSpec(**embedding)
            arch = cls(layers=layers, head=head, embedding=embedding, **record)
        except (TypeError, KeyError, AttributeError, ValueError, RecursionError) as exc:
            raise ValueError(f"malformed {METADATA_KEY} metadata: {exc}") from exc
        if not arch.layers:
            raise ValueError(f"malformed {METADATA_KEY} metadata: no layers")
        counts = [arch.format_version, arch.input_size, arch.opset] + [
            n for layer in arch.layers for n in (layer.units, layer.input_size, layer.parameters)
        ]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
            raise ValueError(f"malformed {METADATA_KEY} metadata: a count is not an integer")
        if arch.format_version > FORMAT_VERSION:
            raise ValueError(
                f"{METADATA_KEY} format {arch.format_version} is newer than this server "
                f"understands ({FORMAT_VERSION}): upgrade lstm-serving"
            )
        return arch

    def summary(self) -> str:
        """A Keras-style table: what each layer receives and returns, and its parameters."""
        kinds = {
            "forward": "LSTM",
            "reverse": "LSTM, go_backwards",
            "bidirectional": "Bidirectional",
        }
        rows = [("Layer", "Receives", "Output shape", "Params (stored)", "Params (Keras)")]
        if self.embedding is None:
            rows.append(("input", "", f"(None, None, {self.input_size})", "", ""))
        else:
            e = self.embedding
            rows.append(("input: token ids", "", "(None, None)", "", ""))
            size = f"{e.vocabulary * e.width:,}"
            rows.append(
                (
                    f"embedding({e.vocabulary}, {e.width})",
                    "(None, None)",
                    f"(None, None, {e.width})",
                    size,
                    size,
                )
            )
        for k, layer in enumerate(self.layers):
            shown = ", ".join([str(layer.units), *layer.options])
            rows.append(
                (
                    f"lstm_{k}: {kinds[layer.direction]}({shown})",
                    f"(None, None, {layer.input_size})",
                    f"(None, None, {layer.output_size})",
                    f"{layer.parameters:,}",
                    f"{layer.keras_parameters:,}",
                )
            )
        outputs = [
            f"{LAST_HIDDEN} (None, {self.output_size})",
            f"{SEQUENCE} (None, None, {self.output_size})",
        ]
        if self.head is not None:
            steps = "None, " if self.head.per_step else ""
            shape = f"(None, {steps}{self.head.units})"
            rows.append(
                (
                    "head: " + self.head.layer_names(),
                    f"(None, {steps}{self.output_size})",
                    shape,
                    f"{self.head.parameters:,}",
                    f"{self.head.parameters:,}",
                )
            )
            outputs.insert(0, f"{PREDICTION} {shape}")
        rows.append(("Total", "", "", f"{self.parameters:,}", f"{self.keras_parameters:,}"))
        lines = table_lines(rows)
        rule = "-" * len(max(lines, key=len))
        footer = [f"Outputs: {', '.join(outputs)}; None = any batch or time"]
        if self.head is not None:
            footer.append(
                f"Forward: out, (h_n, c_n) = lstm(x); y = {self.head.forward(self.bidirectional)}"
            )
        if self.mask_value is not None:
            footer.append(
                f"Masking: steps whose features all equal {self.mask_value:g} are skipped"
            )
        if self.embedding is not None and self.embedding.mask_zero:
            footer.append("Masking: steps whose token id is 0 are skipped (mask_zero)")
        if self.source:
            footer.append(f"Exported from: {self.source}")
        return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1], *footer])
