"""Ratios measured inside one benchmark test: the functions are timed in turn, round after round, the order
reversed every other round, and a ratio is the median of the per-round ratios (the machine is shared, and
its load changes between tests)."""

import time


def interleaved(fns: dict, rounds: int) -> dict:
    """{name: [seconds of each round]}: every function once a round, in reversed order every other round."""
    times = {k: [] for k in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values) -> float:
    return sorted(values)[len(values) // 2]


def ratio(times: dict, a, b) -> float:
    """The median over the rounds of times[a] / times[b]."""
    return median([x / y for x, y in zip(times[a], times[b])])


def fastest(benchmark):
    """Seconds of the fastest round pytest-benchmark timed (one stalled round does not count), or None where it
    timed nothing (--benchmark-disable, xdist: benchmark.stats is None): the test then checks correctness only."""
    return benchmark.stats.stats.min if benchmark.enabled and benchmark.stats is not None else None
