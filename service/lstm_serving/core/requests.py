"""What a protocol adapter hands the data plane, and what it gets back: numpy, no protobuf."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from lstm_serving.contract import Architecture
from lstm_serving.core.tensors import Encoded
from lstm_serving.errors import InvalidArgument

SequenceId = int | str
MAX_SEQUENCE_ID_BYTES = 256


class OutputSet(enum.Enum):
    """Outputs named by what they are rather than one by one."""

    ALL = "all"  # every output the model has (a v2 request that names none)
    DEFAULT = "default"  # the model's own answer: its head's, else the final state


@dataclass(frozen=True, slots=True)
class SequenceStep:
    """A call that is one step of a server-held sequence (Triton's sequence_id/start/end)."""

    id: SequenceId  # not 0, not ""
    start: bool = False
    end: bool = False

    def __post_init__(self) -> None:
        size = len(self.id.encode()) if isinstance(self.id, str) else 0
        if size > MAX_SEQUENCE_ID_BYTES:
            raise InvalidArgument(
                f"sequence id is {size} bytes; at most {MAX_SEQUENCE_ID_BYTES} (the server "
                "keeps ids, so they are bounded)"
            )

    def describe(self) -> str:
        shown = repr(self.id)
        return f"sequence {shown if len(shown) <= 40 else shown[:37] + '...'}"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, for server-held sequences: `owner` (a fingerprint of its token, "" without
    one) is whose sequences it may step; `counted_as` (the owner, or without a token its
    address) is whose --max-sequences-per-owner its sequences count against."""

    owner: str = ""
    counted_as: str = ""


ANYONE = Caller()


@dataclass(frozen=True, slots=True)
class InferRequest:
    model: str
    version: int  # 0: the newest loaded
    inputs: Encoded  # [batch, time, features] float32
    lengths: np.ndarray | None  # [batch]; None: every sequence is `time` long
    outputs: tuple[str, ...] | OutputSet  # contract output names, or a set of them
    with_states: bool = False  # also every layer's final (h, c)
    with_prediction: bool = False  # also the head's output
    deadline: float | None = None  # time.monotonic() value
    # contract.initial_state names -> [directions, batch, units]; None: zeros
    initial_states: dict[str, np.ndarray] | None = None
    sequence: SequenceStep | None = None
    caller: Caller = ANYONE  # for a sequence step: a sequence is its starter's only
    echoed: int = 0  # bytes of the request its answer carries back (a v2 request's id)


@dataclass(frozen=True, slots=True)
class InferResult:
    model: str
    version: int
    architecture: Architecture
    outputs: dict[str, np.ndarray]  # in the order asked for
