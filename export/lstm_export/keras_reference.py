"""Keras's forward pass of a stacked LSTM in NumPy, from Keras's own weights and gate order:
the reference an imported model is verified against, so no TensorFlow (or Keras) is needed.

Written from Keras's definitions, not from the ONNX mapping it checks: kernel [in, 4H] and
recurrent_kernel [H, 4H] with gates i, f, c, o and one bias; hard_sigmoid as the file's Keras
version defines it; go_backwards returns its steps in processing order; Bidirectional
concatenates the forward steps with the backward steps put back in time order. Steps past each
sequence's length (Keras: masked trailing padding) leave the state unchanged and read zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lstm_serving.contract import LAST_HIDDEN, PREDICTION, SEQUENCE, final_state

States = list[tuple[np.ndarray, np.ndarray]]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def activation(name: str, keras_2: bool) -> Callable[[np.ndarray], np.ndarray]:
    functions: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "tanh": np.tanh,
        "sigmoid": _sigmoid,
        "hard_sigmoid": (
            (lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0))
            if keras_2
            else (lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0)
        ),
        "relu": lambda x: np.maximum(x, 0.0),
        "linear": lambda x: x,
        "softsign": lambda x: x / (1.0 + np.abs(x)),
        "softplus": lambda x: np.logaddexp(0.0, x),
        "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    }
    return functions[name]


@dataclass(frozen=True)
class RefLayer:
    weights: list[list[np.ndarray]]  # per direction: kernel, recurrent_kernel[, bias]
    direction: str  # forward, reverse (go_backwards) or bidirectional
    recurrent_activation: str
    activation: str
    keras_2: bool


@dataclass(frozen=True)
class RefDense:
    kernel: np.ndarray
    bias: np.ndarray | None
    activation: str


@dataclass(frozen=True)
class RefHead:
    """Dense layers on the last LSTM's output: its final output (`final-states`), every step
    (`every-step`), or GlobalAveragePooling1D's or GlobalMaxPooling1D's (`mean`, `max`), which
    Keras takes over the unmasked steps."""

    layers: list[RefDense]
    input: str


def _run(
    layer: RefLayer,
    arrays: list[np.ndarray],
    x: np.ndarray,
    lengths: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    backwards: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One direction over [B, T, F]: steps in time order [B, T, H], and the final h and c."""
    kernel, recurrent = arrays[0].astype(np.float64), arrays[1].astype(np.float64)
    bias = arrays[2].astype(np.float64) if len(arrays) > 2 else 0.0
    gate = activation(layer.recurrent_activation, layer.keras_2)
    act = activation(layer.activation, layer.keras_2)
    units = recurrent.shape[0]
    h, c = h.astype(np.float64), c.astype(np.float64)
    steps = np.zeros((x.shape[0], x.shape[1], units))
    order = range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])
    for t in order:
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f = gate(z[:, :units]), gate(z[:, units : 2 * units])
        candidate, o = act(z[:, 2 * units : 3 * units]), gate(z[:, 3 * units :])
        new_c = f * c + i * candidate
        new_h = o * act(new_c)
        live = (t < lengths)[:, None]  # a masked step keeps the state
        c, h = np.where(live, new_c, c), np.where(live, new_h, h)
        steps[:, t] = np.where(live, h, 0.0)
    return steps, h, c


def _processing_order(steps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """go_backwards's output: each sequence's steps reversed within its length."""
    out = np.zeros_like(steps)
    for row, length in enumerate(lengths):
        out[row, :length] = steps[row, :length][::-1]
    return out


class KerasForward:
    def __init__(
        self, layers: list[RefLayer], head: RefHead | None, embedding: np.ndarray | None = None
    ) -> None:
        self.layers, self.head, self.embedding = layers, head, embedding

    def __call__(self, x: np.ndarray, lengths: np.ndarray, states: States) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        rows = x if self.embedding is None else self.embedding[x]  # Embedding: a lookup
        sequence = rows.astype(np.float64)
        lengths = np.asarray(lengths)
        for k, layer in enumerate(self.layers):
            h0, c0 = states[k]
            if layer.direction == "bidirectional":
                forward = _run(layer, layer.weights[0], sequence, lengths, h0[0], c0[0], False)
                backward = _run(layer, layer.weights[1], sequence, lengths, h0[1], c0[1], True)
                sequence = np.concatenate([forward[0], backward[0]], axis=2)
                h, c = np.stack([forward[1], backward[1]]), np.stack([forward[2], backward[2]])
            else:
                backwards = layer.direction == "reverse"
                steps, hk, ck = _run(
                    layer, layer.weights[0], sequence, lengths, h0[0], c0[0], backwards
                )
                sequence = _processing_order(steps, lengths) if backwards else steps
                h, c = hk[None], ck[None]
            out[final_state(k, "h")] = h.astype(np.float32)
            out[final_state(k, "c")] = c.astype(np.float32)
        last_h = out[final_state(len(self.layers) - 1, "h")]
        last_hidden = np.transpose(last_h, (1, 0, 2)).reshape(x.shape[0], -1)
        out[LAST_HIDDEN], out[SEQUENCE] = last_hidden, sequence.astype(np.float32)
        if self.head is not None:
            out[PREDICTION] = self._head(self.head, sequence, last_hidden, lengths)
        return out

    @staticmethod
    def _head(
        head: RefHead, sequence: np.ndarray, last_hidden: np.ndarray, lengths: np.ndarray
    ) -> np.ndarray:
        valid = np.arange(sequence.shape[1])[None, :] < lengths[:, None]  # [B, T]
        if head.input == "every-step":
            z = sequence
        elif head.input == "mean":
            z = sequence.sum(axis=1) / np.maximum(lengths, 1)[:, None]
        elif head.input == "max":
            z = np.where(valid[:, :, None], sequence, -np.inf).max(axis=1)
        else:
            z = last_hidden.astype(np.float64)
        for layer in head.layers:
            z = z @ layer.kernel
            if layer.bias is not None:
                z = z + layer.bias
            if layer.activation == "softmax":
                e = np.exp(z - z.max(axis=-1, keepdims=True))
                z = e / e.sum(axis=-1, keepdims=True)
            else:
                z = activation(layer.activation, keras_2=False)(z)
        if head.input == "every-step":
            z = z * valid[:, :, None]
        return np.asarray(z, dtype=np.float32)
