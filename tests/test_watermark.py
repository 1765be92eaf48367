"""node/watermark.py: the oldest newest-event-time of the senders heard from lately."""

from __future__ import annotations

import pytest

from node.watermark import Watermark


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_sender_is_its_own_watermark_and_none_without_senders():
    clock = Clock()
    mark = Watermark(active_s=1.0, clock=clock)
    assert mark.value() is None  # nothing to wait for
    mark.observe("a", 500)
    assert mark.value() == 500
    mark.observe("a", 400)  # an older batch never moves it back
    assert mark.value() == 500


def test_the_lagging_sender_holds_it_until_it_catches_up_or_goes_quiet():
    clock = Clock()
    mark = Watermark(active_s=1.0, clock=clock)
    mark.observe("a", 1_000)
    mark.observe("b", 900)
    assert mark.value() == 900
    clock.now += 0.6
    mark.observe("a", 2_000)
    assert mark.value() == 900  # b's ticks up to a's newest may still come
    mark.observe("b", 2_100)
    assert mark.value() == 2_000
    clock.now += 0.9
    mark.observe("a", 3_000)  # b silent for 0.9 s: still counts
    assert mark.value() == 2_100 and sorted(mark.active()) == ["a", "b"]
    clock.now += 0.2  # b silent for 1.1 s: a dead or idle bridge holds nothing back
    assert mark.value() == 3_000 and mark.active() == ["a"]
    mark.observe("b", 2_500)  # back: counts again from its newest
    assert mark.value() == 2_500


def test_active_s_must_be_positive():
    with pytest.raises(ValueError):
        Watermark(active_s=0)
