"""Score given prompts on a task's val and test rows, paired against the start prompt.

For questions a search run raises and does not answer: was a candidate it dropped (or
a hand-written prompt) better than the one it returned? Same splits, model, metric and
test-output cache as `run.py`; no optimization, no budget. A probe is exploratory: it
picks prompts after seeing a run, so its figures are not a search's result.

    python -m langchain_gradsum.local_llm run -- python benchmarks/probe.py svamp \\
        --run results/runs/svamp__gradsum__s0.json --candidates c1 c8 \\
        --template "Answer the question: {question}\\nKeep your working short."

`--explore 150:210` scores rows outside every run's splits instead (choosing prompts on
the test rows would make the test split a validation split).

Writes results/probes/<task>__s<seed>[__explore]__<date>.json (the prompts, both splits' scores,
the paired comparison with the start prompt on test, the commit) and prints a line each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    CACHE,
    DEFAULT_DATA,
    RESULTS,
    TASKS,
    CallMeter,
    Ctx,
    git_state,
    load_rows,
    model_server,
    split_indices,
    test_template,
)
from stats import compare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--run", type=Path, help="a run JSON whose candidates to probe")
    p.add_argument("--candidates", nargs="*", default=[], help="candidate ids in --run")
    p.add_argument("--template", action="append", default=[], help="a prompt to probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=30)
    p.add_argument("--val", type=int, default=20)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--model-label", default="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (llama.cpp)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--base-url", default=None)
    p.add_argument("--explore", metavar="START:END",
                   help="score on the seeded shuffle's positions START..END-1 instead of "
                        "val and test (rows after the test split are in no run's splits)")
    p.add_argument("--outside-seeds", type=int, nargs="*", default=[], metavar="SEED",
                   help="with --explore: skip the rows in these seeds' train/val/test "
                        "splits too (other seeds shuffle differently)")
    p.add_argument("--outside-demo", action="store_true",
                   help="with --explore: skip the rows of the task's bundled demo data too")
    a = p.parse_args(argv)
    task = TASKS[a.task]
    prompts: dict[str, str] = {"initial": task.template}
    if a.candidates:
        if a.run is None:
            p.error("--candidates needs --run")
        cands = json.loads(a.run.read_text(encoding="utf-8"))["details"]["candidates"]
        prompts.update({cid: cands[cid]["template"] for cid in a.candidates})
    prompts.update({f"template{k}": t.replace("\\n", "\n") for k, t in enumerate(a.template)})
    rows = load_rows(a.data_dir, task)
    cut = split_indices(len(rows), task, a.seed, a.train, a.val, a.test)
    if a.explore:
        start, end = (int(x) for x in a.explore.split(":"))
        if start < a.train + a.val + a.test or end > len(rows):
            p.error(f"--explore must lie in [{a.train + a.val + a.test}, {len(rows)}]: "
                    "positions before that are the runs' train/val/test rows")
        order = split_indices(len(rows), task, a.seed, len(rows), 0, 0)["train"]
        used = {i for seed in a.outside_seeds for part in split_indices(
            len(rows), task, seed, a.train, a.val, a.test).values() for i in part}
        if a.outside_demo:
            demo = HERE.parent / "langchain_gradsum" / "data" / f"{a.task}_demo.jsonl"
            inputs = {json.dumps(json.loads(line)["inputs"], sort_keys=True)
                      for line in demo.read_text(encoding="utf-8").splitlines() if line}
            used |= {i for i, r in enumerate(rows)
                     if json.dumps(r["inputs"], sort_keys=True) in inputs}
        outside = [i for i in order[start:] if i not in used]
        if len(outside) < end - start:
            p.error(f"--explore {a.explore}: only {len(outside)} rows from position {start} "
                    "lie outside the seeds' splits")
        cut = {"explore": outside[: end - start]}
    splits = tuple(cut) if a.explore else ("val", "test")
    main_split = splits[-1]
    args = SimpleNamespace(seed=a.seed, model_label=a.model_label, concurrency=a.concurrency,
                           cache_dir=CACHE, no_cache=False)
    out: dict[str, Any] = {"task": a.task, "seed": a.seed, "git": git_state(),
                           "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "run": str(a.run) if a.run else None, "prompts": {}}
    with model_server(a.base_url) as url:
        meter = CallMeter(url)
        try:
            scored: dict[str, dict[str, list[dict[str, Any]]]] = {}
            for name, template in prompts.items():
                scored[name] = {}
                for split in splits:
                    ctx = Ctx(task, {"test": [rows[i] for i in cut[split]]}, meter, args,
                              print, test_idx=cut[split])
                    scored[name][split] = test_template(ctx, template)
        finally:
            meter.close()
    if a.explore:
        out["explore"] = {"positions": a.explore, "outside_seeds": a.outside_seeds,
                          "outside_demo": a.outside_demo, "rows": cut["explore"]}
    base = [r["score"] for r in scored["initial"][main_split]]
    for name, template in prompts.items():
        means = {s: sum(r["score"] for r in scored[name][s]) / len(scored[name][s])
                 for s in splits}
        rows_ = scored[name][main_split]
        toks = [r["output_tokens"] for r in rows_ if r["output_tokens"]]
        entry = {"template": template, **means,
                 "out_tokens": round(sum(toks) / len(toks), 1) if toks else None,
                 "cut_off": sum(1 for r in rows_ if r["output_tokens"] == task.max_tokens),
                 f"vs_initial_{main_split}": (compare(base, [r["score"] for r in rows_])
                                              if name != "initial" else None)}
        out["prompts"][name] = entry
        cmp_ = entry[f"vs_initial_{main_split}"]
        tail = "" if cmp_ is None else (
            f"  vs initial {cmp_['diff']:+.2f} [{cmp_['ci95'][0]:+.2f}, {cmp_['ci95'][1]:+.2f}]"
            f" p={cmp_['p_mcnemar']:.2g}")
        shown = " ".join(f"{s} {means[s]:.2f}" for s in splits)
        print(f"{name}: {shown} ({entry['out_tokens']} out tok, {entry['cut_off']} cut off)"
              f"{tail}")
    tag = "__explore" if a.explore else ""
    path = (RESULTS.parent / "probes"
            / f"{a.task}__s{a.seed}{tag}__{out['date_utc'][:10]}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
