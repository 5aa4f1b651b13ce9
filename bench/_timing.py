"""Timing shared by the micro-benchmarks: candidates run in interleaved rounds, so that a noisy
neighbour hits all of them alike; each sample is microseconds per call."""

from __future__ import annotations

import timeit
from collections.abc import Callable


def measure(funcs: dict[str, Callable[[], object]], number: int, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, func in funcs.items():
            seconds = timeit.timeit(func, number=number)
            samples[name].append(seconds / number * 1e6)
    return samples


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """The median of per-round figures and their spread (lowest, highest)."""
    import statistics

    return statistics.median(values), min(values), max(values)


def ratio_rounds(samples: dict[str, list[float]], product: str, baseline: str) -> tuple[float, float, float]:
    """The product's time over the baseline's, round by round (each pair ran back to back):
    the median ratio and its spread, the figures the README quotes."""
    return median_spread([a / b for a, b in zip(samples[product], samples[baseline], strict=True)])


def format_ratio(stats: tuple[float, float, float], rounds: int) -> str:
    median, low, high = stats
    return f"median {median:.2f}x (spread {low:.2f}x to {high:.2f}x over {rounds} rounds)"
