"""StackedLSTM: a stack of single-layer LSTMs whose widths may differ, with Keras semantics,
and an optional Linear head (on the final state, or on every step)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [directions, batch, units]
HEAD_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda z: z,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda z: torch.softmax(z, dim=-1),
}


@dataclass(frozen=True)
class HeadConfig:
    """A Linear layer on the stack: what it reads of the last layer (contract.HEAD_INPUTS) and
    what the forward applies after it."""

    units: int
    activation: str = "linear"  # one of spec.HEAD_ACTIVATIONS
    input: str = "final-states"
    bias: bool = True

    @property
    def per_step(self) -> bool:
        return self.input == "every-step"


class StackedLSTM(nn.Module):
    """Layers of `nn.LSTM(batch_first=True)`, one per width, like Keras's stacked LSTM(..).

    Layer k receives layer k-1's full output sequence; only the first input size is declared.
    """

    def __init__(
        self,
        input_size: int,
        layers: list[int],
        bidirectional: bool = False,
        dropout: float = 0.0,
        head: HeadConfig | None = None,
        vocabulary: int = 0,
    ) -> None:
        """`vocabulary` > 0: an nn.Embedding of `input_size` wide rows in front, taking ids."""
        super().__init__()
        if input_size < 1 or not layers or min(layers) < 1:
            raise ValueError("input_size and every layer width must be positive, with >= 1 layer")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size = input_size
        self.units = list(layers)
        self.bidirectional = bidirectional
        self.directions = 2 if bidirectional else 1
        self.layers = nn.ModuleList()
        width = input_size
        for units in layers:
            self.layers.append(nn.LSTM(width, units, batch_first=True, bidirectional=bidirectional))
            width = self.directions * units
        self.dropout = nn.Dropout(dropout)
        self.head_config = head
        self.head = None if head is None else nn.Linear(width, head.units, bias=head.bias)
        self.embedding = nn.Embedding(vocabulary, input_size) if vocabulary else None

    @property
    def output_size(self) -> int:
        return self.directions * self.units[-1]

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sequence [B, T, D*H], last_hidden [B, D*H]), zeros past each length."""
        sequence, last_hidden, _ = self.forward_with_state(x, lengths)
        return sequence, last_hidden

    def forward_with_state(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        initial_states: list[State] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[State]]:
        """Like forward, also taking and returning each layer's (h, c) state."""
        if self.embedding is not None:  # token ids [B, T] -> their rows [B, T, input_size]
            x = self.embedding(x)
        batch, time, _ = x.shape
        if lengths is None:
            lengths = torch.full((batch,), time, dtype=torch.int64)
        lengths = lengths.to("cpu", torch.int64)
        out = x
        finals: list[State] = []
        for k, lstm in enumerate(self.layers):
            if k > 0:
                out = self.dropout(out)
            packed = pack_padded_sequence(out, lengths, batch_first=True, enforce_sorted=False)
            state = None if initial_states is None else initial_states[k]
            packed_out, (h, c) = lstm(packed, state)
            out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=time)
            finals.append((h, c))
        h_last = finals[-1][0]  # [D, B, H]: forward then backward final states
        last_hidden = h_last.permute(1, 0, 2).reshape(batch, self.output_size)
        return out, last_hidden, finals

    def prediction(
        self, sequence: torch.Tensor, last_hidden: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """The head's output on what it reads (each row's own valid steps only), zeros past each
        length for a per-step head."""
        assert self.head is not None and self.head_config is not None
        config = self.head_config
        lengths = lengths.to("cpu", torch.int64)
        valid = torch.arange(sequence.shape[1])[None, :] < lengths[:, None]  # [B, T]
        if config.input == "final-states":
            read = last_hidden
        elif config.input == "every-step":
            read = sequence
        elif config.input == "last-step":
            read = sequence[torch.arange(len(lengths)), (lengths - 1).clamp(min=0)]
        elif config.input == "mean":
            read = sequence.sum(1) / lengths.clamp(min=1)[:, None].to(sequence.dtype)
        elif config.input == "max":
            read = sequence.masked_fill(~valid[:, :, None], float("-inf")).max(1).values
        else:
            raise ValueError(f"unknown head input {config.input!r}")
        z = HEAD_FUNCTIONS[config.activation](self.head(read))
        if config.per_step:
            z = z * valid[:, :, None].to(z.dtype)
        return z
