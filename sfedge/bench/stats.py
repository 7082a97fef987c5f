"""Summary statistics over benchmark runs: median and range, nothing fancier."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping


def summarize(values: Iterable[float]) -> dict[str, float]:
    """{"median", "min", "max", "n"} of the values (must be non-empty)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no values to summarize")
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize_runs(runs: list[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per-key summary over a list of {stage: value} dicts (keys missing from a run are skipped)."""
    keys = list(dict.fromkeys(k for run in runs for k in run))
    return {k: summarize(run[k] for run in runs if k in run) for k in keys}


def ratio(reference: float | None, engine: float | None) -> float | None:
    """reference / engine (the speedup of the engines; > 1 = engines faster), None if undefined."""
    if reference is None or engine is None or engine <= 0:
        return None
    return reference / engine
