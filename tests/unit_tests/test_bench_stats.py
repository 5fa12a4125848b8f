"""benchmarks/stats.py and the paired-comparison / cache plumbing of benchmarks/run.py."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str, file: str) -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / file)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


stats = _load("bench_stats", "stats.py")
run = _load("bench_run", "run.py")


# --------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(("only_a", "only_b", "p"), [
    (0, 0, 1.0),
    (0, 5, 2 / 32),
    (5, 0, 2 / 32),
    (1, 9, 2 * 11 / 1024),          # scipy.stats.binomtest(1, 10).pvalue
    (2, 8, 2 * 56 / 1024),          # 0.109375
    (5, 5, 1.0),
    (0, 1, 1.0),
    (3, 17, 2 * (1 + 20 + 190 + 1140) / 2 ** 20),  # 0.002577...
])
def test_mcnemar_known_tables(only_a: int, only_b: int, p: float) -> None:
    assert stats.mcnemar_p(only_a, only_b) == pytest.approx(p, rel=1e-12)


def test_mcnemar_from_vectors_ignores_concordant_rows() -> None:
    # 40 rows both right, 30 both wrong, 2 right only in a, 8 right only in b
    a = [1] * 40 + [0] * 30 + [1] * 2 + [0] * 8
    b = [1] * 40 + [0] * 30 + [0] * 2 + [1] * 8
    assert stats.discordant(a, b) == (2, 8)
    assert stats.mcnemar_exact(a, b) == pytest.approx(0.109375)
    assert stats.mcnemar_exact(b, a) == pytest.approx(0.109375)
    with pytest.raises(ValueError):
        stats.mcnemar_exact(a, b[:-1])


# --------------------------------------------------------------------------- bootstrap


def test_paired_bootstrap_contains_true_difference() -> None:
    # ref: 40/100 right; run: 30 of ref's wrong rows now right, 5 of its right rows wrong
    ref = [1] * 40 + [0] * 60
    new = [1] * 35 + [0] * 5 + [1] * 30 + [0] * 30
    true_diff = sum(new) / 100 - sum(ref) / 100
    assert true_diff == pytest.approx(0.25)
    diff, lo, hi = stats.paired_bootstrap(ref, new, n_boot=10_000, seed=0)
    assert diff == pytest.approx(true_diff)
    assert lo < true_diff < hi
    assert lo > 0  # the lift is clear
    # the width is about that of the normal approximation of a paired difference
    p10, p01 = 30 / 100, 5 / 100
    se = math.sqrt((p10 + p01 - (p10 - p01) ** 2) / 100)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    # seeded: the same interval again; another seed moves it only a little
    assert stats.paired_bootstrap(ref, new, seed=0) == (diff, lo, hi)
    _, lo2, hi2 = stats.paired_bootstrap(ref, new, seed=1)
    assert abs(lo2 - lo) <= 0.03 and abs(hi2 - hi) <= 0.03


def test_paired_bootstrap_no_discordant_pairs_is_a_point() -> None:
    a = [1, 0, 1, 1, 0]
    assert stats.paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    c = stats.compare(a, a)
    assert c["p_mcnemar"] == 1.0 and c["ci95"] == [0.0, 0.0] and c["n"] == 5


def test_bootstrap_mean_and_wilson() -> None:
    m, lo, hi = stats.bootstrap_mean([1] * 70 + [0] * 30)
    assert m == pytest.approx(0.7) and lo < 0.7 < hi and 0.55 < lo < hi < 0.85
    wl, wh = stats.wilson(70, 100)
    assert wl < 0.7 < wh
    assert stats.wilson(0, 0) == (0.0, 0.0)


# --------------------------------------------------------------------------- cache


class FakeModel:
    """Counts invocations (thread-safe); replies with the prompt's last word."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        self.fail_on = fail_on

    def invoke(self, text: str) -> Any:
        with self.lock:
            self.calls += 1
        if self.fail_on and self.fail_on in text:
            raise RuntimeError("boom")
        return SimpleNamespace(content=f"The answer is {text.split()[-1]}",
                               usage_metadata={"output_tokens": 4})


def _ctx(tmp_path: Path, seed: int = 0, concurrency: int = 4, no_cache: bool = False
         ) -> Any:
    task = run.TASKS["svamp"]
    test = [{"inputs": {"question": f"what is {i}"}, "outputs": {"answer": str(i % 3)}}
            for i in range(12)]
    args = argparse.Namespace(seed=seed, model_label="fake", concurrency=concurrency,
                              cache_dir=tmp_path / "cache", no_cache=no_cache)
    return run.Ctx(task, {"train": [], "val": [], "test": test}, None, args,
                   lambda _m: None, test_idx=[100 + i for i in range(12)])


def test_cache_hit_path_tests_an_identical_prompt_once(tmp_path: Path) -> None:
    model = FakeModel()
    ctx = _ctx(tmp_path)
    first = run.test_template(ctx, ctx.task.template, model=model)
    assert model.calls == 12
    assert [r["row"] for r in first] == [100 + i for i in range(12)]  # input order kept
    assert not any(r["cached"] for r in first)
    assert ctx.extra["cache"]["misses"] == 12

    # `initial` and a GRAD-SUM run that returned the start prompt: no call the second time
    ctx2 = _ctx(tmp_path)
    again = run.test_template(ctx2, ctx2.task.template, model=model)
    assert model.calls == 12
    assert all(r["cached"] for r in again)
    assert [(r["output"], r["score"]) for r in again] == \
        [(r["output"], r["score"]) for r in first]
    assert ctx2.extra["cache"] == {"file": ctx.extra["cache"]["file"], "hits": 12,
                                   "misses": 0}
    assert all(r["output_tokens"] == 4 for r in again)

    # another template, another seed, or --no-cache: called again
    run.test_template(_ctx(tmp_path), "Solve: {question}", model=model)
    assert model.calls == 24
    run.test_template(_ctx(tmp_path, seed=1), ctx.task.template, model=model)
    assert model.calls == 36
    run.test_template(_ctx(tmp_path, no_cache=True), ctx.task.template, model=model)
    assert model.calls == 48
    files = sorted((tmp_path / "cache").glob("*.json"))
    assert len(files) == 3
    data = json.loads(files[0].read_text(encoding="utf-8"))
    assert set(data) == {"meta", "rows"} and len(data["rows"]) == 12


def test_cache_does_not_store_errors(tmp_path: Path) -> None:
    bad = FakeModel(fail_on="what is 3")
    out = run.test_template(_ctx(tmp_path, concurrency=1), "Q: {question}", model=bad)
    assert out[3]["output"].startswith("<error RuntimeError")
    assert bad.calls == 12
    good = FakeModel()
    out = run.test_template(_ctx(tmp_path, concurrency=1), "Q: {question}", model=good)
    assert good.calls == 1  # only the row that failed is sent again
    assert not out[3]["cached"] and out[3]["output"] == "The answer is 3"


# --------------------------------------------------------------------------- results


def _result(opt: str, scores: list[int], seed: int = 0, budget: int = 150,
            rows: list[int] | None = None, date: str = "2026-12-01T00:00:00+00:00",
            calls: int = 0) -> dict[str, Any]:
    rows = rows if rows is not None else list(range(len(scores)))
    return {"task": "svamp", "optimizer": opt, "seed": seed, "date_utc": date,
            "settings": {"seed": seed, "budget": budget, "train": 30, "val": 20,
                         "test": len(scores)},
            "test_score": sum(scores) / len(scores), "test_correct": sum(scores),
            "test_n": len(scores), "ci95_wilson": list(stats.wilson(sum(scores),
                                                                    len(scores))),
            "optimization": {"calls": calls, "budget": None if opt == "initial" else budget,
                             "refused_over_budget": 0, "wall_s": 1.0},
            "test": {"calls": len(scores), "completion_tokens": 10 * len(scores),
                     "wall_s": 1.0},
            "total_tokens": 1, "wall_s": 2.0, "error": None, "final_prompt": "x",
            "test_rows": [{"row": r, "score": s, "output": ""}
                          for r, s in zip(rows, scores, strict=True)]}


def test_result_names_and_pairing(tmp_path: Path) -> None:
    assert run.result_name("svamp", "gradsum", 1, 150) == "svamp__gradsum__s1.json"
    assert run.result_name("svamp", "gradsum", 0, 300) == "svamp__gradsum__s0__b300.json"
    assert run.result_name("svamp", "initial", 0, 300) == "svamp__initial__s0.json"
    init = [1] * 20 + [0] * 80
    grad = [1] * 20 + [1] * 15 + [0] * 65
    # an old-style file name and a newer run of the same (task, optimizer, seed)
    old = _result("initial", [0] * 100, date="2026-11-01T00:00:00+00:00")
    (tmp_path / "svamp__initial.json").write_text(json.dumps(old), encoding="utf-8")
    for name, r in [("svamp__initial__s0.json", _result("initial", init)),
                    ("svamp__gradsum__s0.json", _result("gradsum", grad, calls=140)),
                    ("svamp__initial__s1.json", _result("initial", init, seed=1))]:
        (tmp_path / name).write_text(json.dumps(r), encoding="utf-8")
    runs = run.load_runs(tmp_path)
    assert [(r["optimizer"], run.run_seed(r)) for r in runs] == \
        [("initial", 0), ("gradsum", 0), ("initial", 1)]
    assert runs[0]["_file"] == "svamp__initial__s0.json"
    c = run.comparisons(runs, runs[1])
    assert c["gradsum"] is None
    assert c["initial"]["diff"] == pytest.approx(0.15)
    assert c["initial"]["p_mcnemar"] == pytest.approx(2 / 2 ** 15)
    assert c["initial"]["ci95"][0] > 0
    assert run.comparisons(runs, runs[2]) == {"initial": None, "gradsum": None}
    # rows matched by data index, not position
    shuffled = _result("copro", grad[::-1], rows=list(range(100))[::-1])
    a, b = run.paired_scores(runs[1], shuffled)
    assert a == b
    text = run.table(tmp_path)
    assert "+0.15 [" in text and "p=6e-05" in text and "140 / 150" in text


def test_seeds_pool_each_seeds_paired_rows_only_where_both_ran_two_seeds(tmp_path: Path
                                                                          ) -> None:
    # seed 0: gradsum wins 6 rows, loses 1; seed 1: wins 4, loses 0 (rows 100-109)
    files = {
        "svamp__initial__s0.json": _result("initial", [0] * 6 + [1] + [1] * 3),
        "svamp__gradsum__s0.json": _result("gradsum", [1] * 6 + [0] + [1] * 3),
        "svamp__initial__s1.json": _result("initial", [0] * 4 + [1] * 6, seed=1,
                                           rows=list(range(100, 110))),
        "svamp__gradsum__s1.json": _result("gradsum", [1] * 10, seed=1,
                                           rows=list(range(100, 110))),
        "svamp__gradsum__s1__b300.json": _result("gradsum", [0] * 10, seed=1, budget=300,
                                                 rows=list(range(100, 110))),
        "svamp__copro__s0.json": _result("copro", [0] * 10),  # one seed: not pooled
    }
    for name, r in files.items():
        (tmp_path / name).write_text(json.dumps(r), encoding="utf-8")
    runs = run.load_runs(tmp_path)
    seeds, c = run.pooled(runs, "svamp", "initial", "gradsum")
    assert seeds == [0, 1] and c["n"] == 20  # the 300-call run is not mixed in
    assert (c["only_run"], c["only_ref"]) == (10, 1)
    assert c["p_mcnemar"] == pytest.approx(2 * 12 / 2 ** 11)
    assert run.pooled(runs, "svamp", "gradsum", "copro") is None
    text = run.pooled_table(tmp_path)
    assert "| svamp | gradsum vs initial | 0, 1 | 20 | +0.45 [" in text
    assert "copro" not in text


def test_a_label_task_run_is_compared_with_its_best_constant_reply(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the bbh_sports winner that answers "no" everywhere scores exactly the share of "no"
    answers = ("no",) * 7 + ("yes",) * 3
    monkeypatch.setattr(run, "_answers", lambda task: answers)
    rows = [{"row": i, "score": float(a == "no")} for i, a in enumerate(answers)]
    always_no = {"task": "bbh_sports_understanding", "test_rows": rows}
    top, c = run.constant_reply(always_no)
    assert top == "no" and c["diff"] == 0 and c["p_mcnemar"] == 1.0
    right = {**always_no, "test_rows": [{"row": i, "score": 1.0} for i in range(10)]}
    assert run.constant_reply(right)[1]["diff"] == pytest.approx(0.3)
    # a metric that does not score a label has no constant to beat
    assert run.constant_reply({**always_no, "task": "svamp"}) is None


def test_mcnemar_power_grows_with_the_rows_and_is_small_without_a_lift() -> None:
    """No lift: a significant win comes only from chance (at most alpha / 2 one-sided);
    a lift of +0.06 with a quarter of the rows differing is seldom seen on 100 rows and
    mostly on 400 (the simulation of 2026-12-07 gave 0.17 and 0.63)."""
    assert stats.mcnemar_power(100, 0.12, 0.12) <= 0.025
    small, large = stats.mcnemar_power(100, 0.15, 0.09), stats.mcnemar_power(400, 0.15, 0.09)
    assert 0.12 < small < 0.22 and 0.55 < large < 0.72
    assert stats.mcnemar_power(400, 0.20, 0.04) > 0.99
    assert stats.mcnemar_power(0, 0.2, 0.1) == 0.0 and stats.mcnemar_power(50, 0.0, 0.0) == 0.0


def test_subsets_pair_a_run_with_the_start_prompt_on_each_part_of_its_test_split(
        tmp_path: Path) -> None:
    subsets = _load("bench_subsets", "subsets.py")
    initial = {"test_rows": [{"row": r, "score": 1.0 if r < 5 else 0.0} for r in range(10)]}
    run_ = {"test_rows": [{"row": r, "score": 1.0 if r >= 3 else 0.0} for r in range(10)]}
    probe = tmp_path / "svamp__s0__explore-x__2026-12-07.json"
    probe.write_text(json.dumps({"explore": {"rows": [7, 8, 9, 42]}}))
    (tmp_path / "svamp__s1__explore__2026-12-07.json").write_text(
        json.dumps({"explore": {"rows": [0]}}))  # another seed: not counted
    probed = subsets.probed_rows("svamp", 0, tmp_path)
    assert probed == {7, 8, 9, 42}
    parts = subsets.subsets(run_, initial, probed, first=4)
    assert parts["first 4"]["n"] == 4 and parts["first 4"]["score"] == 0.25
    assert (parts["all"]["only_run"], parts["all"]["only_ref"]) == (5, 3)
    outside = parts["outside probes"]
    assert outside["n"] == 7 and (outside["only_run"], outside["only_ref"]) == (2, 3)
    assert outside["initial"] == 5 / 7
