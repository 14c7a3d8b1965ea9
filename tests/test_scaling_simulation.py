"""The processor group's scaling, simulated (benchmarks/scaling.py): holds, scales out, sleeps.

The signal is the stack's: visible plus in-flight messages per daemon of the in-service
instances; the contrast is the signal the stack had before, visible messages alone.
"""

from __future__ import annotations

import time

import pytest

from benchmarks.scaling import (
    TRUTHFUL,
    VISIBLE_ONLY,
    Fleet,
    phases,
    simulate,
    steady,
)

FLEET = Fleet()
# The stack's OldestMessageAgeThreshold default: what an operator is told is too old.
TARGET_LATENCY_S = 900


def test_a_steady_load_holds_one_fleet_size_without_oscillating() -> None:
    # Given 120 images/s, some 2.4 instances' worth at 50 images/s each
    run = simulate(TRUTHFUL, steady(120.0), minutes=240)

    # Then after the first hour the group never changes size, and no image waits
    settled = run.desired[60:]
    assert run.changes(60) == 0
    assert set(settled) == {4}  # 120 / (4 x 50) = 60% busy, under the 75% target
    assert run.max_wait(60 * 60) <= 1


def test_the_visible_only_signal_saws_under_the_same_load() -> None:
    run = simulate(VISIBLE_ONLY, steady(120.0), minutes=240)

    # The queue empties, the signal reads zero, the group shrinks to nothing and wakes again.
    assert run.reversals(60) >= 6
    assert min(run.desired[60:]) == 0
    assert run.max_wait(60 * 60) > TARGET_LATENCY_S / 2
    assert run.max_wait(60 * 60) > 100 * simulate(TRUTHFUL, steady(120.0), 240).max_wait(3600)


@pytest.mark.parametrize("start", ["asleep", "running"])
def test_a_burst_is_served_within_the_target_latency(start: str) -> None:
    # Given a sleeping group, or one serving 60 images/s, when 40,000 images arrive at once
    load = steady(0.0) if start == "asleep" else steady(60.0)
    burst_at = 3600
    run = simulate(TRUTHFUL, load, minutes=120, burst=[(burst_at, 40_000)])

    # Then more instances launch within five minutes, no image waits longer than the
    # oldest-message alarm allows (boot time included), and the group sleeps again
    before = run.desired[burst_at // 60 - 1]
    grown = next(m for m in range(burst_at // 60, 120) if run.desired[m] > before)
    assert grown - burst_at // 60 <= 5
    assert max(run.desired) == FLEET.max_size
    assert run.max_wait(burst_at) <= TARGET_LATENCY_S
    assert run.desired[-1] == (0 if start == "asleep" else 2)
    assert run.served == run.arrived


def test_the_group_goes_back_to_zero_when_idle() -> None:
    # Given an hour at 30 images/s, then nothing
    run = simulate(TRUTHFUL, phases((3600, 30.0), (3600, 0.0)), minutes=120)

    # Then, once the queue built while the first instance booted is gone, one instance serves
    # it without a queue, and the group is empty 20 minutes after the last image
    assert set(run.desired[35:60]) == {1}
    assert run.max_wait(35 * 60, 60 * 60) <= 1
    idle = next(m for m in range(60, 120) if run.desired[m] == 0)
    assert idle - 60 <= 20
    assert set(run.desired[idle:]) == {0}
    assert run.served == run.arrived


def test_the_simulation_is_deterministic_and_fast() -> None:
    started = time.perf_counter()
    first = simulate(TRUTHFUL, steady(120.0), minutes=240, seed=7)
    second = simulate(TRUTHFUL, steady(120.0), minutes=240, seed=7)
    assert time.perf_counter() - started < 5
    assert (first.desired, first.waits) == (second.desired, second.waits)
    assert first.waits != simulate(TRUTHFUL, steady(120.0), minutes=240, seed=8).waits
