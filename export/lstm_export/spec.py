"""What the graph writer needs to know of a model, whatever it came from (PyTorch, Keras):
each LSTM layer's weights in ONNX's layout and order, its direction and activations, and an
optional Dense/Linear head. Sources map into it (`torch_source`, `keras_source`); the graph
writer (`onnx_graph`) reads only this. NumPy only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from lstm_serving.contract import EmbeddingSpec, HeadSpec, LayerSpec

DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")  # ONNX's f (gates), g (cell), h (output)
# What a head may apply after its Dense/Linear (Keras's names; PyTorch's via --head-activation).
HEAD_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")


@dataclass(frozen=True)
class Activation:
    """An ONNX activation of the LSTM operator, with its alpha/beta where it has them."""

    name: str
    alpha: float | None = None
    beta: float | None = None


SIGMOID, TANH = Activation("Sigmoid"), Activation("Tanh")


@dataclass(frozen=True)
class LstmLayer:
    W: np.ndarray  # [directions, 4H, input] gates i, o, f, c
    R: np.ndarray  # [directions, 4H, H]
    B: np.ndarray  # [directions, 8H]: input biases, then recurrent biases
    direction: str  # "forward", "reverse" (Keras go_backwards) or "bidirectional"
    gates: Activation = SIGMOID  # f: i, o, f gates (Keras recurrent_activation)
    cell: Activation = TANH  # g and h: candidate and output (Keras activation)
    bias: bool = True  # False: Keras use_bias=False (B is zeros, and not counted by Keras)

    @property
    def units(self) -> int:
        return int(self.R.shape[2])

    @property
    def input_size(self) -> int:
        return int(self.W.shape[2])

    def spec(self) -> LayerSpec:
        activations = (self.gates.name, self.cell.name)
        keras_bias = self.B.size // 2 if self.bias else 0  # Keras keeps one bias vector
        return LayerSpec(
            units=self.units,
            direction=self.direction,
            input_size=self.input_size,
            parameters=int(self.W.size + self.R.size + self.B.size),
            keras_parameters=int(self.W.size + self.R.size + keras_bias),
            activations=() if activations == ("Sigmoid", "Tanh") else activations,
            bias=self.bias,
        )


@dataclass(frozen=True)
class Dense:
    """One Dense / Linear layer before the head's last: activation(x @ kernel + bias)."""

    kernel: np.ndarray  # [input, units]
    bias: np.ndarray | None  # [units]
    activation: str  # one of HEAD_ACTIVATIONS
    name: str


@dataclass(frozen=True)
class Head:
    """Dense / Linear layers on the last layer's output, read as `input` says
    (contract.HEAD_INPUTS: Keras's Dense reads the final states, every step after
    return_sequences=True, or a GlobalAverage/MaxPooling1D's mean or max); `hidden` run first,
    then this layer's kernel, bias and activation."""

    kernel: np.ndarray  # [input, units]
    bias: np.ndarray | None  # [units]
    activation: str  # linear, relu, sigmoid, tanh or softmax
    input: str = "final-states"
    hidden: tuple[Dense, ...] = ()
    name: str = "fc"

    @property
    def dense_layers(self) -> tuple[Dense, ...]:
        """Every Dense layer of the head, in order, its last one included."""
        return (*self.hidden, Dense(self.kernel, self.bias, self.activation, self.name))

    def apply(self, z: np.ndarray) -> np.ndarray:
        """The whole stack on [..., input] in float64 (its answer on zeros is recorded)."""
        for layer in self.dense_layers:
            z = np.asarray(z, np.float64) @ layer.kernel
            z = z if layer.bias is None else z + layer.bias
            z = head_activation(layer.activation, z)
        return z

    @property
    def per_step(self) -> bool:
        return self.input == "every-step"

    def spec(self) -> HeadSpec:
        layers = self.dense_layers
        parameters = sum(d.kernel.size + (0 if d.bias is None else d.bias.size) for d in layers)
        zeros = np.zeros(self.hidden[0].kernel.shape[0] if self.hidden else self.kernel.shape[0])
        return HeadSpec(
            units=int(self.kernel.shape[1]),
            activation=self.activation,
            per_step=self.per_step,
            parameters=int(parameters),
            input=self.input,
            at_zero=tuple(float(v) for v in self.apply(zeros)),
            hidden=tuple((d.name, int(d.kernel.shape[1]), d.activation) for d in self.hidden),
            name=self.name,
        )


@dataclass(frozen=True)
class Embedding:
    """Keras Embedding / nn.Embedding: row `id` of `table` is step `id`'s input."""

    table: np.ndarray  # [vocabulary, width]
    padding_id: int | None = None
    mask_zero: bool = False

    def spec(self) -> EmbeddingSpec:
        vocabulary, width = self.table.shape
        return EmbeddingSpec(int(vocabulary), int(width), self.padding_id, self.mask_zero)


@dataclass(frozen=True)
class ModelSpec:
    layers: list[LstmLayer]
    head: Head | None = None
    mask_value: float | None = None  # Keras Masking: steps equal to it are skipped, anywhere
    source: str = ""  # e.g. "keras 3.15.1 .keras"; "" for our own StackedLSTM
    notes: list[str] = field(default_factory=list)  # what the user should know, printed
    embedding: Embedding | None = None  # token ids in front of the LSTMs

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size


def sha256_of(arrays: list[np.ndarray]) -> str:
    """A hash of weights, in order, to tie a model file to the weights it was made from."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def head_activation(name: str, z: np.ndarray) -> np.ndarray:
    """A HEAD_ACTIVATIONS function in NumPy, over the last axis."""
    z = np.asarray(z, np.float64)
    if name == "relu":
        out = np.maximum(z, 0.0)
    elif name == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-z))
    elif name == "tanh":
        out = np.tanh(z)
    elif name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        out = e / e.sum(axis=-1, keepdims=True)
    else:
        out = z
    return np.asarray(out)
