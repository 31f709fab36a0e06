"""`InflightPairs`: the ingress's bound on pairs in scoring (no Ray, no HTTP)."""

from __future__ import annotations

import pytest

from serve_app.core.errors import Overloaded
from serve_app.core.inflight import InflightPairs


def test_admits_up_to_the_bound_and_refuses_past_it() -> None:
    gate = InflightPairs(10)
    assert gate.try_acquire(6) and gate.try_acquire(4)
    assert gate.full and not gate.try_acquire(1)
    gate.release(4)
    assert not gate.full
    assert not gate.try_acquire(5)  # 6 + 5 > 10
    assert gate.try_acquire(4)
    assert (gate.pairs, gate.requests, gate.refused) == (10, 2, 2)


def test_one_request_of_any_size_is_admitted_when_none_is_under_way() -> None:
    gate = InflightPairs(10)
    assert gate.try_acquire(1000)
    assert gate.full and not gate.try_acquire(1)
    gate.release(1000)
    assert (gate.pairs, gate.requests) == (0, 0) and not gate.full


def test_zero_is_unbounded() -> None:
    gate = InflightPairs(0)
    assert all(gate.try_acquire(10_000) for _ in range(100))
    assert not gate.full


def test_hold_releases_however_the_block_ends_and_refuses_with_overloaded() -> None:
    gate = InflightPairs(10)
    with pytest.raises(RuntimeError), gate.hold(8):
        raise RuntimeError("scoring failed")
    assert (gate.pairs, gate.requests) == (0, 0)
    with gate.hold(8):
        with pytest.raises(Overloaded), gate.hold(3):
            pass
        assert (gate.pairs, gate.requests) == (8, 1)
    assert (gate.pairs, gate.requests) == (0, 0)
