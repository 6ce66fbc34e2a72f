"""Bytes the server holds for its callers: answers being computed or waiting to be read, with
their requests' inputs, server-wide and per connection (--answer-budget,
--answer-budget-per-connection).

Counts of calls do not bound memory: one call may ask for a 16 MB answer and never read it, and
gRPC holds an answer until the client's flow-control window takes it. A call reserves its bytes
before it runs and gives them back when its answer has been sent (or its call has ended), so a
client that does not read holds at most its connection's budget, and past either budget new
work is refused RESOURCE_EXHAUSTED before it is computed.
"""

from __future__ import annotations

import collections

from lstm_serving.errors import ResourceExhausted

# What an answer holds until the client's window takes it, in copies of its size: measured,
# the response message, its serialization and gRPC's copy are all kept until then.
HELD_ANSWER_COPIES = 4


class AnswerBudget:
    def __init__(self, limit: int, per_connection: int) -> None:
        self.limit, self.per_connection = limit, per_connection
        self.held = 0
        self.by_connection = collections.Counter[str]()

    def share(self, connection: str) -> Share:
        """A call's (or a stream's) part of the budget, on `connection` (the gRPC peer: one
        address and port is one connection)."""
        return Share(self, connection)


class Share:
    """What one call or stream has reserved and not yet given back."""

    __slots__ = ("_budget", "_connection", "size")

    def __init__(self, budget: AnswerBudget, connection: str) -> None:
        self._budget, self._connection = budget, connection
        self.size = 0

    def reserve(self, size: int) -> None:
        """Takes `size` bytes, or raises ResourceExhausted. A connection (and the server) that
        holds nothing always admits one call, whatever its size: the budgets bound what waits,
        never whether an allowed request can run at all."""
        budget = self._budget
        on_connection = budget.by_connection[self._connection]
        if on_connection and on_connection + size > budget.per_connection:
            raise ResourceExhausted(
                f"this connection already holds {on_connection} bytes of answers not yet read "
                f"(or still running); this call needs {size} more, over the "
                f"{budget.per_connection} a connection may hold (--answer-budget-per-connection)"
                ": read the answers you asked for before asking for more"
            )
        if budget.held and budget.held + size > budget.limit:
            raise ResourceExhausted(
                f"the server holds {budget.held} bytes of answers not yet read (or still "
                f"running); this call needs {size} more, over its {budget.limit} "
                "(--answer-budget): retry with backoff"
            )
        budget.by_connection[self._connection] = on_connection + size
        budget.held += size
        self.size += size

    def hold(self, input_bytes: int, answer_bytes: int) -> None:
        """Reserves what a call holds until its answer is sent: its inputs, and its answer
        HELD_ANSWER_COPIES times over (the data plane's `Reserve`)."""
        self.reserve(input_bytes + HELD_ANSWER_COPIES * answer_bytes)

    def release(self, size: int | None = None) -> None:
        """Gives back `size` bytes, or everything this share holds."""
        size = self.size if size is None else size
        if not size:
            return
        budget = self._budget
        self.size -= size
        budget.held -= size
        left = budget.by_connection[self._connection] - size
        if left:
            budget.by_connection[self._connection] = left
        else:
            del budget.by_connection[self._connection]
