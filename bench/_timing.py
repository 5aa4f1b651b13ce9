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
