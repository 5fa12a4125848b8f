"""A run against the start prompt on parts of its test split: the first N rows (the
split every 100-row run shares), all of them, and the rows no probe has looked at.

A larger test split buys power (`stats.mcnemar_power`), but on a 600-row task the extra
rows are the rows earlier probes explored to choose built-in sentences (svamp: 206 of
the 400 test rows of seed 0). Figures on rows a prompt was chosen on favour that
prompt, so each is shown on its own:

    python benchmarks/subsets.py svamp --seed 0 [--optimizer gradsum] [--first 100]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import RESULTS, result_name  # noqa: E402
from stats import compare  # noqa: E402

PROBES = HERE / "results" / "probes"


def probed_rows(task: str, seed: int, probes: Path = PROBES) -> set[int]:
    """Data rows any `probe.py --explore` run of `task` and `seed` scored."""
    rows: set[int] = set()
    for path in probes.glob(f"{task}__s{seed}__explore*.json"):
        rows |= set(json.loads(path.read_text(encoding="utf-8"))["explore"]["rows"])
    return rows


def subsets(run: dict, initial: dict, probed: set[int], first: int) -> dict[str, dict]:
    """`compare` of `initial` and `run` on the first `first` test rows, on every test
    row both have, and on those outside `probed` (rows matched by data row index)."""
    base = {x["row"]: float(x["score"]) for x in initial["test_rows"]}
    order = [x["row"] for x in run["test_rows"] if x["row"] in base]
    mine = {x["row"]: float(x["score"]) for x in run["test_rows"]}
    parts = {f"first {first}": order[:first], "all": order,
             "outside probes": [r for r in order if r not in probed]}
    return {name: {**compare([base[r] for r in rows], [mine[r] for r in rows]),
                   "score": sum(mine[r] for r in rows) / len(rows) if rows else None,
                   "initial": sum(base[r] for r in rows) / len(rows) if rows else None}
            for name, rows in parts.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", default="gradsum")
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--first", type=int, default=100)
    a = p.parse_args(argv)
    load = lambda name: json.loads(  # noqa: E731
        (RESULTS / result_name(a.task, name, a.seed, a.budget)).read_text(encoding="utf-8"))
    run, initial = load(a.optimizer), load("initial")
    for name, c in subsets(run, initial, probed_rows(a.task, a.seed), a.first).items():
        print(f"{name}: {c['n']} rows, {a.optimizer} {c['score']:.3f} vs initial "
              f"{c['initial']:.3f}: {c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
              f", {c['only_run']} won, {c['only_ref']} lost, McNemar p = {c['p_mcnemar']:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
