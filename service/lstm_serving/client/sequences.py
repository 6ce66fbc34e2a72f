"""Server-held sequences from Python: a handle that opens, steps and ends one sequence over
one lstm.v1 PredictStream (so every step reaches the same replica behind any L7 balancer).

    async with client.sequence("seed", "sensor-7") as seq:     # AsyncLstmClient
        for chunk in chunks:                                     # chunk: [time, features]
            out = await seq.step(chunk)
        await seq.step(last_chunk, end=True)

`LstmClient.sequence` gives the same handle, blocking. The first step carries START (with
`initial_state`, to continue a checkpointed sequence); `end=True` frees the server's state at
once, otherwise it is freed after the server's --sequence-idle-timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self, TypedDict, Unpack

import grpc
import numpy as np

from lstm_serving.client.blocking import Blocking, blocking
from lstm_serving.client.messages import LayerStates, Prediction, predict_request, prediction
from lstm_serving.proto.v1 import lstm_pb2 as pb
from lstm_serving.protocols.lstm_v1 import INITIAL_STATE_FIELD

Stream = grpc.aio.StreamStreamCall[pb.PredictRequest, pb.PredictResponse]


class SequenceOptions(TypedDict, total=False):
    version: int  # 0 (default): the newest
    initial_state: LayerStates | None  # where its START continues from (a Prediction's states)


class SequenceEnded(Exception):
    """A step after the step marked end=True."""


class AsyncSequence:
    def __init__(
        self,
        open_stream: Callable[[], Stream],
        model: str,
        sequence_id: int | str,
        **options: Unpack[SequenceOptions],
    ) -> None:
        self.model, self.id, self.version = model, sequence_id, options.get("version", 0)
        self._open_stream = open_stream
        self._initial = options.get(INITIAL_STATE_FIELD)
        self._call: Stream | None = None
        self.steps = 0
        self.ended = False

    async def step(
        self,
        inputs: np.ndarray,
        *,
        end: bool = False,
        output: str | None = None,
        return_state: bool = False,
    ) -> Prediction:
        """The next chunk, [time, features] or [1, time, features] (for a text model, integer
        token ids [time] or [1, time]); answered in order."""
        if self.ended:
            raise SequenceEnded(f"sequence {self.id!r} was ended")
        if self._call is None:
            self._call = self._open_stream()
        x = np.asarray(inputs)
        tokens = x.dtype.kind in "iu"  # ids for a text model; anything else is features
        x = x if tokens else x.astype(np.float32)
        request = predict_request(
            self.model,
            x[None] if x.ndim == (1 if tokens else 2) else x,
            output=output,
            version=self.version,
            return_state=return_state,
            initial_state=self._initial if self.steps == 0 else None,
            sequence_id=self.id,
            sequence_start=self.steps == 0,
            sequence_end=end,
        )
        await self._call.write(request)
        response = await self._call.read()  # a failed step raises its status here
        if not isinstance(response, pb.PredictResponse):  # EOF: closed without an answer
            raise RuntimeError(f"the server closed sequence {self.id!r}'s stream unanswered")
        self.steps += 1
        self.ended = end
        return prediction(response)

    async def close(self) -> None:
        """Closes the stream; the sequence stays open on the server unless it was ended."""
        if self._call is not None:
            await self._call.done_writing()
            self._call.cancel()
            self._call = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class BlockingSequence(Blocking[AsyncSequence]):
    """AsyncSequence, blocking: on the LstmClient's event-loop thread."""

    step = blocking(AsyncSequence.step)
    close = blocking(AsyncSequence.close)

    @property
    def ended(self) -> bool:
        return self._inner.ended

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
