"""The processor group's scaling policies, simulated minute by minute against a queue.

Run: .venv/bin/python -m benchmarks.scaling   (prints the three scenarios for both signals)

A model, not a measurement: arrivals per second (seeded Poisson), instances that serve a fixed
rate once ready (boot time after launch), and the two policies of the stack as CloudWatch and
EC2 Auto Scaling apply them: one-minute datapoints, target tracking that scales out after 3
datapoints above the target and in after 15 below 90% of it (never while an instance warms
up), and the wake-from-zero step policy. Messages in flight follow Little's law: a ready
instance holds its full `holding` (a batch in hand and one prefetched, per daemon) while it is
fully busy, and that times its busy fraction otherwise. The stack's signal adds the two lanes'
queues (interactive and bulk) together, so the one queue here stands for their sum.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Load = Callable[[int], float]  # second -> mean arrivals per second


@dataclass(frozen=True)
class Fleet:
    """What one processor instance can do, and how long it takes to become ready."""

    rate: float = 50.0  # images/s per ready instance (two daemons on a g4dn.xlarge)
    processes: int = 2  # daemons per instance (ProcessesPerInstance)
    batch: int = 10  # messages per receive
    boot_s: int = 360  # launch to ready: boot, wheelhouse install, model load and warm-up
    max_size: int = 8  # ProcessorMaxSize

    @property
    def holding(self) -> int:
        """Messages a fully busy instance holds: per daemon, a batch in hand and one prefetched."""
        return self.processes * 2 * self.batch


@dataclass(frozen=True)
class Policy:
    """A target tracking signal and its target, per ready instance."""

    name: str
    counts_in_flight: bool
    target: float
    scale_out_datapoints: int = 3
    scale_in_datapoints: int = 15
    wake_steps: tuple[tuple[int, int], ...] = ((1, 1),)  # (visible at least, instances)


# The stack's policy: (visible + in flight) / (in-service instances x daemons) at
# MessagesPerProcess (15, about 75% of a daemon's 20), woken from zero in proportion to the
# backlog. The template test compares these numbers with the template's.
WAKE_STEPS: tuple[tuple[int, int], ...] = ((1, 1), (2000, 2), (10000, 4))
MESSAGES_PER_PROCESS = 15
TRUTHFUL = Policy("visible + in flight per ready daemon", True,
                  MESSAGES_PER_PROCESS * Fleet().processes, wake_steps=WAKE_STEPS)
# The stack's policy before issue 13: visible messages per in-service instance at 1500.
VISIBLE_ONLY = Policy("visible per in-service instance", False, 1500.0)


@dataclass
class Run:
    """What a simulation came to, minute by minute and per message."""

    desired: list[int] = field(default_factory=list)  # per minute
    ready: list[int] = field(default_factory=list)  # per minute
    signal: list[float | None] = field(default_factory=list)  # per minute
    waits: list[tuple[int, int, int]] = field(default_factory=list)  # (served at s, wait s, n)
    arrived: int = 0
    served: int = 0

    def max_wait(self, start_s: int = 0, end_s: int | None = None) -> int:
        """The longest queue wait of the messages served in [start_s, end_s)."""
        return max((w for t, w, _ in self.waits
                    if t >= start_s and (end_s is None or t < end_s)), default=0)

    def changes(self, start_min: int = 0, end_min: int | None = None) -> int:
        """How many times the desired capacity changed in the minutes [start_min, end_min)."""
        window = self.desired[start_min:end_min]
        return sum(1 for a, b in itertools.pairwise(window) if a != b)

    def reversals(self, start_min: int = 0, end_min: int | None = None) -> int:
        """Changes of direction of the desired capacity (out then in, or in then out)."""
        window = self.desired[start_min:end_min]
        steps = [b - a for a, b in itertools.pairwise(window) if a != b]
        return sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))


def steady(rate: float) -> Load:
    """The same mean arrival rate all along."""
    return lambda second: rate


def phases(*spans: tuple[int, float]) -> Load:
    """Arrival rates by span: ((seconds, rate), ...), the last rate holding afterwards."""
    def load(second: int) -> float:
        for length, rate in spans:
            if second < length:
                return rate
            second -= length
        return spans[-1][1]
    return load


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def simulate(policy: Policy, load: Load, minutes: int, *, fleet: Fleet = Fleet(),
             burst: Sequence[tuple[int, int]] = (), seed: int = 13) -> Run:
    """Run the policy for `minutes` against the load (plus bursts: (second, messages))."""
    rng = random.Random(seed)
    bursts = dict(burst)
    run = Run()
    queue: deque[list[int]] = deque()  # [arrival second, messages], oldest first
    visible = 0
    desired = 0
    launches: list[int] = []  # ready-at second of each instance, oldest first
    datapoints: list[float | None] = []
    for minute in range(minutes):
        sums, seen, peak_visible = 0.0, 0, 0
        for second in range(minute * 60, minute * 60 + 60):
            arrivals = _poisson(rng, load(second)) + bursts.get(second, 0)
            if arrivals:
                queue.append([second, arrivals])
                visible += arrivals
                run.arrived += arrivals
            ready = sum(1 for at in launches if at <= second)
            capacity = int(ready * fleet.rate)
            served = min(capacity, visible)
            left = served
            while left:
                cohort = queue[0]
                take = min(left, cohort[1])
                run.waits.append((second, second - cohort[0], take))
                cohort[1] -= take
                left -= take
                if not cohort[1]:
                    queue.popleft()
            visible -= served
            run.served += served
            in_flight = fleet.holding * ready * (served / capacity) if capacity else 0.0
            peak_visible = max(peak_visible, visible)
            if ready:
                held = visible + (in_flight if policy.counts_in_flight else 0.0)
                sums += held / ready
                seen += 1
        ready = sum(1 for at in launches if at <= minute * 60 + 59)
        pending = len(launches) - ready
        # No instance in service: the guarded division gives no datapoint at all.
        datapoints.append(sums / seen if seen == 60 else None)
        run.signal.append(datapoints[-1])
        desired = _target_tracking(policy, datapoints, desired, ready, pending, fleet)
        if ready == 0 and pending == 0:
            desired = max(desired, _wake(policy, peak_visible, fleet))
        now = minute * 60 + 60
        while len(launches) < desired:
            launches.append(now + fleet.boot_s)
        while len(launches) > desired:
            launches.pop()  # the newest (a pending one first)
        run.desired.append(desired)
        run.ready.append(ready)
    return run


def _target_tracking(policy: Policy, datapoints: list[float | None], desired: int, ready: int,
                     pending: int, fleet: Fleet) -> int:
    """Desired capacity after this minute's datapoint, as target tracking would set it."""
    out = datapoints[-policy.scale_out_datapoints:]
    if len(out) == policy.scale_out_datapoints and all(
            d is not None and d > policy.target for d in out):
        wanted = math.ceil(ready * out[-1] / policy.target)  # type: ignore[operator]
        return min(fleet.max_size, max(desired, wanted))
    back = datapoints[-policy.scale_in_datapoints:]
    if pending == 0 and len(back) == policy.scale_in_datapoints and all(
            d is not None and d < 0.9 * policy.target for d in back):
        wanted = math.ceil(ready * back[-1] / policy.target)  # type: ignore[operator]
        return max(0, min(desired, wanted))
    return desired


def _wake(policy: Policy, visible: int, fleet: Fleet) -> int:
    """Instances the step policy starts when messages wait and nothing is in service."""
    wanted = 0
    for at_least, instances in policy.wake_steps:
        if visible >= at_least:
            wanted = instances
    return min(fleet.max_size, wanted)


def _summary(name: str, run: Run, start_min: int = 0) -> str:
    return (f"  {name:<40} changes {run.changes(start_min):>3}  reversals "
            f"{run.reversals(start_min):>3}  max wait {run.max_wait(start_min * 60):>5} s  "
            f"peak {max(run.desired)}  end {run.desired[-1]}")


def main() -> None:
    """Print the three scenarios of tests/test_scaling_simulation.py for both policies."""
    scenarios = {
        "steady 120 images/s for 4 h (from the 60th minute)": (steady(120.0), 240, (), 60),
        "idle, then 40,000 images at once": (steady(0.0), 60, ((300, 40_000),), 0),
        "30 images/s for 1 h, then idle for 1 h": (phases((3600, 30.0), (3600, 0.0)), 120, (), 0),
    }
    for title, (load, minutes, burst, start) in scenarios.items():
        print(title)
        for policy in (TRUTHFUL, VISIBLE_ONLY):
            print(_summary(policy.name, simulate(policy, load, minutes, burst=burst), start))


if __name__ == "__main__":
    main()
