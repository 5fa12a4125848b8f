"""Statistics and the test-output cache of benchmarks/run.py (pure Python, no scipy).

* `wilson`: Wilson score interval of one run's accuracy.
* `mcnemar_exact`: McNemar's exact test of two runs scored on the same rows (two-sided
  binomial test on the discordant pairs).
* `paired_bootstrap`: seeded paired bootstrap percentile interval of the difference in
  mean score between two runs on the same rows.
* `bootstrap_mean`: seeded bootstrap percentile interval of one run's mean (plot error bars).
* `mcnemar_power`: the chance that a test of n paired rows shows a given lift at p < alpha.
* `TestCache`: row index -> model output for one exact (task, seed, model, prompt,
  max_tokens); identical final prompts are tested once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_gradsum._scoring import sign_test_p

N_BOOT = 10_000


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def binary(scores: Sequence[float], threshold: float = 0.5) -> list[int]:
    """Per-row pass/fail (scores are 0/1 for every benchmark metric; >= threshold passes)."""
    return [1 if s >= threshold else 0 for s in scores]


def discordant(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    """(rows right in `a` only, rows right in `b` only)."""
    if len(a) != len(b):
        raise ValueError(f"paired vectors differ in length: {len(a)} vs {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return only_a, only_b


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts: the package's own
    sign test (`_scoring.sign_test_p`), which the result's validation comparison uses."""
    return sign_test_p(only_a, only_b)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float:
    """McNemar exact p-value of two score vectors on the same rows (binarized)."""
    return mcnemar_p(*discordant(binary(a), binary(b)))


@lru_cache(maxsize=4096)
def _boot_sorted(d: tuple[float, ...], n_boot: int, seed: int) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(d)
    means = sorted(sum(rng.choices(d, k=n)) / n for _ in range(n_boot))
    lo = means[int(math.floor(0.025 * (n_boot - 1)))]
    hi = means[int(math.ceil(0.975 * (n_boot - 1)))]
    return lo, hi


def bootstrap_ci(values: Sequence[float], n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean of `values` over `n_boot` seeded resamples.
    The result depends only on the multiset of values (sorted first), so identical inputs
    give identical intervals and are computed once."""
    if not values:
        return (0.0, 0.0)
    return _boot_sorted(tuple(sorted(float(v) for v in values)), n_boot, seed)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = N_BOOT,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean(b) - mean(a), lo, hi): paired bootstrap 95% interval of the difference,
    resampling rows (the same rows for both runs)."""
    if len(a) != len(b):
        raise ValueError(f"paired vectors differ in length: {len(a)} vs {len(b)}")
    if not a:
        return (0.0, 0.0, 0.0)
    d = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    lo, hi = bootstrap_ci(d, n_boot, seed)
    return sum(d) / len(d), lo, hi


def bootstrap_mean(values: Sequence[float], n_boot: int = N_BOOT,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) with a seeded bootstrap percentile 95% interval."""
    if not values:
        return (0.0, 0.0, 0.0)
    lo, hi = bootstrap_ci(values, n_boot, seed)
    return sum(values) / len(values), lo, hi


def compare(ref: Sequence[float], run: Sequence[float], n_boot: int = N_BOOT,
            seed: int = 0) -> dict[str, Any]:
    """Paired comparison of `run` against `ref` on the same rows."""
    a, b = binary(ref), binary(run)
    only_ref, only_run = discordant(a, b)
    diff, lo, hi = paired_bootstrap(ref, run, n_boot, seed)
    return {"n": len(a), "diff": diff, "ci95": [lo, hi], "p_mcnemar": mcnemar_p(only_ref,
                                                                                 only_run),
            "only_ref": only_ref, "only_run": only_run}


def mcnemar_power(n: int, only_new: float, only_old: float, alpha: float = 0.05) -> float:
    """The chance that McNemar's exact test on `n` paired rows finds the new prompt
    significantly better (more rows won than lost, p < `alpha`), when each row is won by
    it with probability `only_new` and lost with `only_old` (exact, no simulation).

    What a test split can show: on svamp a fifth to a third of the rows differ between
    two prompts (21 of 100 between the start prompt and the `cfaff92` pick, 33 for the
    `gradsum_demos` pick of `17ee008`); with a quarter differing, a true lift
    of +0.06 (`only_new` 0.15, `only_old` 0.09) reaches p < 0.05 on 100 rows in about one
    run of six, and on 400 rows in about two of three."""
    q = only_new + only_old
    if n <= 0 or q <= 0:
        return 0.0
    share = only_new / q
    power = 0.0
    for d in range(1, n + 1):
        p_d = math.comb(n, d) * q ** d * (1 - q) ** (n - d)
        if p_d < 1e-12:
            continue
        # the fewest wins out of d discordant rows that are significant (p falls as wins rise)
        crit = next((w for w in range(d // 2 + 1, d + 1) if mcnemar_p(w, d - w) < alpha), None)
        if crit is None:
            continue
        power += p_d * sum(math.comb(d, w) * share ** w * (1 - share) ** (d - w)
                           for w in range(crit, d + 1))
    return power


# --------------------------------------------------------------------------- cache


def cache_key(task: str, seed: int, model: str, prompt: str, max_tokens: int) -> str:
    blob = json.dumps({"task": task, "seed": seed, "model": model, "prompt": prompt,
                       "max_tokens": max_tokens}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


class TestCache:
    """Test outputs of one exact prompt: a JSON file `<dir>/<task>__<key>.json` mapping the
    data row index (as a string) -> {"output", "output_tokens"}. Thread-safe; each `put`
    rewrites the file atomically, so an interrupted test phase keeps what it got."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, task: str, seed: int, model: str, prompt: str,
                 max_tokens: int) -> None:
        self.key = cache_key(task, seed, model, prompt, max_tokens)
        self.path = Path(directory) / f"{task}__{self.key}.json"
        self.meta = {"task": task, "seed": seed, "model": model, "prompt": prompt,
                     "max_tokens": max_tokens}
        self.lock = threading.Lock()
        self.rows: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("meta") == self.meta:
                    self.rows = dict(data.get("rows") or {})
            except (OSError, ValueError):
                self.rows = {}

    def get(self, row: int) -> dict[str, Any] | None:
        with self.lock:
            got = self.rows.get(str(row))
            if got is None:
                self.misses += 1
            else:
                self.hits += 1
            return got

    def put(self, row: int, output: str, output_tokens: int | None = None) -> None:
        with self.lock:
            self.rows[str(row)] = {"output": output, "output_tokens": output_tokens}
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"meta": self.meta, "rows": self.rows}, f, indent=1, ensure_ascii=False)
        os.replace(tmp, self.path)
