"""The blocking client's machinery: the asyncio implementation, run on a private event-loop
thread, so the blocking and asyncio clients are one implementation that cannot drift apart,
and a blocking client may be shared by threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
Inner = TypeVar("Inner")


class LoopThread:
    """A private event loop on a daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lstm-client", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class Blocking(Generic[Inner]):
    """Base of a blocking wrapper: its asyncio object and the loop thread that runs it."""

    def __init__(self, loop: LoopThread, inner: Inner) -> None:
        self._loop, self._inner = loop, inner


def blocking(
    method: Callable[Concatenate[Inner, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Blocking[Inner], P], T]:
    """The asyncio method, run to completion on the wrapper's loop thread."""

    def call(wrapper: Blocking[Inner], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return wrapper._loop.run(method(wrapper._inner, *args, **kwargs))

    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call
