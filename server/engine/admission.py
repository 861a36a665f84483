"""The waiting queue: one FIFO per client, served round-robin, so one client cannot starve the others.

Clients are opaque strings (the RPC layer passes an API key's name or a peer
address). Which request is admitted next is scheduling only: every sequence's
tokens are the same whenever it runs, so fairness changes no token.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sequence import EngineSequence


class FairQueue:
    """Waiting sequences by client. The client served last goes to the back of the ring."""

    def __init__(self) -> None:
        self._queues: collections.OrderedDict[str, collections.deque[EngineSequence]] = collections.OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[EngineSequence]:
        for queue in self._queues.values():
            yield from queue

    def count(self, client: str) -> int:
        queue = self._queues.get(client)
        return len(queue) if queue else 0

    def append(self, client: str, seq: EngineSequence) -> None:
        self._queues.setdefault(client, collections.deque()).append(seq)
        self._count += 1

    def next_turn(self, skip: Collection[str] = ()) -> tuple[str, EngineSequence] | None:
        """(client, its oldest sequence) for the first client in the ring not in `skip`; None if none."""
        for client, queue in self._queues.items():
            if client not in skip:
                return client, queue[0]
        return None

    def pop(self, client: str | None = None) -> EngineSequence:
        """Take the oldest sequence of `client` (default: the client whose turn it is) and move that
        client to the back of the ring; a skipped client keeps its place at the front."""
        if client is None:
            client = next(iter(self._queues))
        queue = self._queues[client]
        seq = queue.popleft()
        self._count -= 1
        if queue:
            self._queues.move_to_end(client)
        else:
            del self._queues[client]
        return seq

    def remove(self, client: str, seq: EngineSequence) -> bool:
        """Drop `seq` (a cancelled or failed request) at once; False if it was not waiting."""
        queue = self._queues.get(client)
        if not queue:
            return False
        try:
            queue.remove(seq)
        except ValueError:
            return False
        self._count -= 1
        if not queue:
            del self._queues[client]
        return True

    def remove_if(self, predicate: Callable[[EngineSequence], bool]) -> list[EngineSequence]:
        """Drop and return every waiting sequence for which predicate(seq) holds."""
        dropped: list[EngineSequence] = []
        for client in list(self._queues):
            queue = self._queues[client]
            kept = collections.deque(s for s in queue if not predicate(s))
            dropped.extend(s for s in queue if predicate(s))
            if kept:
                self._queues[client] = kept
            else:
                del self._queues[client]
        self._count -= len(dropped)
        return dropped
