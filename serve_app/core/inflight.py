"""How much scoring one ingress replica has under way, and whether one more request may join.

Under overload the work ahead of an admitted request is what sets its latency; Serve's queues
(the proxy's, a handle's) bound it only in requests, whatever their size, and refuse in plain
text at the proxy. `InflightPairs` bounds it in pairs (texts x labels), at the ingress, before
anything is sent: a request that would take the pairs under way past the bound is refused at
once (the routes answer a JSON 503 with Retry-After). One request is always admitted when none
is under way, however large, so every request the size limits allow can be served.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from serve_app.core.errors import Overloaded

SCORING_FULL_MESSAGE = (
    "the server is scoring as much as it can take now; retry after 1 second (or submit large "
    "work as a job)"
)


class InflightPairs:
    """Pairs under way on this replica, bounded by `max_pairs` (0 = unbounded). Not thread-safe:
    one per event loop, as one ingress replica has."""

    def __init__(self, max_pairs: int) -> None:
        self.max_pairs = max_pairs
        self.pairs = 0
        self.requests = 0
        self.refused = 0

    @property
    def full(self) -> bool:
        """No request of any size is admitted now: the bound is reached."""
        return bool(self.max_pairs) and self.requests > 0 and self.pairs >= self.max_pairs

    def try_acquire(self, pairs: int) -> bool:
        if self.max_pairs and self.requests and self.pairs + pairs > self.max_pairs:
            self.refused += 1
            return False
        self.pairs += pairs
        self.requests += 1
        return True

    def release(self, pairs: int) -> None:
        self.pairs -= pairs
        self.requests -= 1

    @contextmanager
    def hold(self, pairs: int) -> Iterator[None]:
        """Hold `pairs` for the block (released however it ends), or raise `Overloaded`."""
        if not self.try_acquire(pairs):
            raise Overloaded(SCORING_FULL_MESSAGE)
        try:
            yield
        finally:
            self.release(pairs)
