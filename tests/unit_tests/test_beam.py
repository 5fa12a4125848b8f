"""Pruning (`select_beam`), screening and the decisions after scoring (`advance`), the
`route` edge, every stop condition, and budget arithmetic."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace
from typing import Any

import pytest
from gradsum_fakes import context, optimizer, qa_rows, scripted

from langchain_gradsum.beam import (
    advance,
    affordable,
    beam_on_stop,
    calls_needed_for_one_iteration,
    field_score,
    final_reserve,
    fit_finalists,
    iteration_cost,
    iterations_without_improvement,
    narrowed_finalists,
    route,
    select_beam,
    shrunk_scores,
    stop_reason,
)
from langchain_gradsum.nodes import new_candidate


def cand(cid: str, it: int, scores: dict[int, float]) -> dict[str, Any]:
    c = new_candidate(cid, f"{cid} {{question}}", parent_id=None if cid == "c0" else "c0",
                      iteration=it, summary=None)
    c["scores"] = {str(k): v for k, v in scores.items()}
    return c


def state_of(cands: list[dict[str, Any]], iteration: int, beam: list[str] | None = None,
             **extra: Any) -> dict[str, Any]:
    return {"prompt": "{question}", "train": qa_rows(4), "val": [], "iteration": iteration,
            "candidates": {c["id"]: c for c in cands},
            "beam": beam if beam is not None else [c["id"] for c in cands], **extra}


# --- select_beam ------------------------------------------------------------------------


def test_select_beam_keeps_the_best_parents_and_children_by_minibatch_score() -> None:
    state = state_of([
        cand("c0", 0, {0: 0.2, 1: 0.5}),
        cand("c1", 1, {1: 0.9}),
        cand("c2", 1, {1: 0.1}),
        cand("c3", 1, {1: 0.7}),
        cand("c4", 1, {}),  # not scored this iteration (budget ran out)
    ], iteration=1)
    assert select_beam(state, 3) == ["c1", "c3", "c0"]
    assert select_beam(state, 1) == ["c1"]
    assert select_beam(state, 10) == ["c1", "c3", "c0", "c2"]


def test_select_beam_uses_this_iterations_score_only_unless_pooled() -> None:
    # c0 was great on the last minibatch but is worse on this one
    state = state_of([cand("c0", 0, {0: 1.0, 1: 0.3}), cand("c1", 1, {1: 0.4})], iteration=1)
    assert select_beam(state, 1) == ["c1"]
    assert select_beam(state, 1, pooled=True) == ["c0"]  # 0.65 over two batches


def test_pooled_ranking_keeps_a_parent_a_single_bad_batch_would_drop() -> None:
    """hellaswag, 5a58f22: the start prompt (0.25, 1.0, 0.5, then 0.0) left the beam for
    two children at 0.25 that scored 0.10 and 0.25 on validation to its 0.60."""
    state = state_of([cand("c0", 0, {0: 0.25, 1: 1.0, 2: 0.5, 3: 0.0}),
                      cand("c1", 1, {1: 0.25, 2: 0.5, 3: 0.25}), cand("c6", 3, {3: 0.25}),
                      cand("c7", 3, {})], iteration=3)
    assert select_beam(state, 2) == ["c1", "c6"]
    assert select_beam(state, 2, pooled=True) == ["c0", "c1"]
    # the knob reaches the beam decisions
    batch_rows = {f"{c}|train|{i}": {"output": "x", "score": float(c != "c0" and i == 0)}
                  for c in ("c0", "c1", "c6") for i in range(4)}  # c0 0.0, c1 and c6 0.25
    # corrected for batch difficulty (the default), c6 (level with c1 on batch 3, where
    # c0 scored 0) leads and c0 stays, 0.75 above c1 on batch 1; validation had c0 0.60,
    # c6 0.25, c1 0.10
    for pooled, by_batch, beam in ((True, False, ["c0", "c1"]), (False, False, ["c1", "c6"]),
                                   (True, True, ["c6", "c0"])):
        st = {**state, "records": batch_rows, "batch": [0, 1, 2, 3], "beam": ["c0", "c1", "c6"]}
        update, _ = advance(st, ctx(beam_width=2, pooled_ranking=pooled, max_iterations=10,
                                    batch_difficulty=by_batch))
        assert update["beam"] == beam


def test_pooled_prior_ranks_a_score_held_over_several_batches_above_one_lucky_batch() -> None:
    """svamp seed 1, bcedf83: c1 scored 0.75 on each of three batches, c3 0.75 on its
    only one; the plain mean tied them and c3 went ahead on a tie-break, c1 was never
    validated. Shrunk by one batch towards the field's mean, c1 leads; a child with full
    marks on its one batch still goes ahead of it."""
    cands = [cand("c0", 0, {0: 0.5, 1: 0.75, 2: 0.25, 3: 0.75}),
             cand("c1", 1, {1: 0.75, 2: 0.75, 3: 0.75}), cand("c3", 2, {3: 0.75}),
             cand("c4", 3, {3: 0.5}), cand("c5", 3, {3: 0.25})]
    state = state_of(cands, iteration=3)
    run, ids = state["candidates"], ["c1", "c3"]
    assert shrunk_scores(run, ids, 0.0) == {"c1": 0.75, "c3": 0.75}
    shrunk = shrunk_scores(run, ids, 1.0)
    assert shrunk["c1"] == pytest.approx(0.703125) and shrunk["c3"] == pytest.approx(0.65625)
    adjusted = shrunk_scores(run, ids, 1.0, by_batch=True)  # c1 0.5 above c0 on batch 2
    assert adjusted["c1"] > adjusted["c3"] and adjusted["c1"] - adjusted["c3"] > 0.04
    for by_batch in (False, True):
        assert select_beam(state, 1, pooled=True, prior=1.0, by_batch=by_batch) == ["c1"]
        assert select_beam(state, 2, pooled=True, prior=0.0)[1] in ("c1", "c3")
        lucky = state_of([*cands, cand("c6", 3, {3: 1.0})], iteration=3)
        assert select_beam(lucky, 2, pooled=True, prior=1.0, by_batch=by_batch) == ["c6", "c1"]
    # the knob reaches the beam decisions: the tie-break on output tokens favours c3
    right = {"c0": 3, "c1": 3, "c3": 3, "c4": 2, "c5": 1}  # of 4: the scores above
    records = {f"{c}|train|{i}": {"output": "7", "score": float(i < n),
                                  "output_tokens": 10 if c == "c3" else 100}
               for c, n in right.items() for i in range(4)}
    for prior, first in ((1.0, "c1"), (0.0, "c3")):
        scored = state_of([cand(c["id"], c["iteration"], {k: v for k, v in c["scores"].items()
                                                           if k != "3"}) for c in cands],
                          iteration=3)
        st = {**scored, "records": records, "batch": [0, 1, 2, 3]}
        update, _ = advance(st, ctx(beam_width=1, pooled_prior=prior, max_iterations=10,
                                    batch_difficulty=False))
        assert update["beam"] == [first]
    # corrected for batch difficulty, c1 leads even on plain means (0.5 above c0 on batch 2)
    update, _ = advance(st, ctx(beam_width=1, pooled_prior=0.0, max_iterations=10))
    assert update["beam"] == ["c1"]


def test_shrinking_is_towards_the_whole_run_so_a_family_level_on_one_batch_still_ranks(
) -> None:
    """svamp seed 0, f552244 (`gradsum_demos`): after a budget cut the beam was c7 (0.75
    on each of four batches) and its child c9 (0.75 on its one); shrunk towards their
    own mean nothing moved, c9 went ahead on fewer output tokens and took the one
    finalist place beside the start prompt, and c7 was never validated."""
    run = [cand("c0", 0, {0: 0.5, 1: 0.75, 2: 0.5, 3: 0.75}),
           cand("c1", 1, {1: 0.75, 2: 0.25, 3: 1.0}), cand("c2", 1, {1: 0.5}),
           cand("c4", 2, {2: 0.25}), cand("c5", 2, {2: 0.5}),
           cand("c7", 3, {3: 0.75, 4: 0.75, 5: 0.75}), cand("c9", 6, {})]
    records = {f"{c}|train|{i}": {"output": "7", "score": float(i < 3),
                                  "output_tokens": 40 if c == "c9" else 60}
               for c in ("c7", "c9") for i in range(4)}
    state = state_of(run, iteration=6, beam=["c7", "c9"], records=records,
                     batch=[0, 1, 2, 3], finalists_cap=2)
    update, _ = advance(state, ctx(beam_width=2, max_iterations=6))
    assert update["stop_reason"] == "max_iterations"
    assert update["beam"] == ["c7"]  # with c0, the two finalists
    scored = state_of([*run[:5], cand("c7", 3, {3: 0.75, 4: 0.75, 5: 0.75, 6: 0.75}),
                       cand("c9", 6, {6: 0.75})], iteration=6, beam=["c7", "c9"])
    shrunk = shrunk_scores(scored["candidates"], ["c7", "c9"], 1.0)
    assert field_score(scored["candidates"]) == pytest.approx(0.5774, abs=1e-4)
    assert shrunk["c7"] == pytest.approx(0.7155, abs=1e-4)
    assert shrunk["c9"] == pytest.approx(0.6637, abs=1e-4)
    adjusted = shrunk_scores(scored["candidates"], ["c7", "c9"], 1.0, by_batch=True)
    assert adjusted["c7"] > adjusted["c9"]
    # towards the two's own mean (0.75) they stay level: c9's shorter replies won the tie
    family = {c: scored["candidates"][c] for c in ("c7", "c9")}
    assert shrunk_scores(family, ["c7", "c9"], 1.0) == {"c7": 0.75, "c9": 0.75}


def rerun_8ef70e1() -> dict[str, Any]:
    """svamp seed 0, 8ef70e1 (`results/runs-rerun`): at the stop one finalist place was
    left beside the start prompt. c1 (the reply form) had 0.64 over seven batches; its
    rewrite c8, benched, 0.75 on its one batch (3), where c1 scored 1.0."""
    cands = [cand("c0", 0, {0: 0.5, 1: 0.5}),
             cand("c1", 1, {1: 0.5, 2: 0.75, 3: 1.0, 4: 0.5, 5: 0.75, 6: 0.5}),
             cand("c2", 1, {1: 0.5, 2: 0.25}), cand("c3", 2, {2: 0.5}),
             cand("c5", 2, {2: 0.25}), cand("c6", 2, {2: 0.5}), cand("c8", 3, {3: 0.75}),
             cand("c13", 7, {})]
    records = {f"{c}|train|{i}": {"output": "7", "score": float(i < 2)}
               for c in ("c1", "c13") for i in range(4)}  # both 0.5 on batch 7
    return state_of(cands, iteration=7, beam=["c1", "c13"], benched=["c8"], records=records,
                    batch=[0, 1, 2, 3], finalists_cap=2)


@pytest.mark.parametrize("by_batch", [True, False])
def test_a_rewrite_that_scored_below_its_parent_on_their_one_shared_batch_does_not_outrank_it(
        by_batch: bool) -> None:
    update, _ = advance(rerun_8ef70e1(),
                        ctx(beam_width=2, max_iterations=7, batch_difficulty=by_batch))
    assert update["stop_reason"] == "max_iterations"
    # plain means: c8 0.626, c1 0.625 (c8 scored 0.45 on validation to c0's 0.65);
    # corrected for batch 3 being easy, c8 ranks 0.45 and c1 0.59
    assert update["beam"] == (["c1"] if by_batch else ["c8"])


def test_batch_difficulty_is_what_the_candidates_scored_on_a_batch_beyond_their_own_level(
) -> None:
    from langchain_gradsum.beam import batch_difficulty

    # a and b differ by 0.5 on every batch they share; batch 1 is 0.25 easier than batch 0
    scores = {"a": {"0": 0.5, "1": 0.75}, "b": {"0": 0.0, "1": 0.25}, "c": {"2": 1.0}}
    hard = batch_difficulty(scores, field=0.5, prior=0.0)
    assert hard["1"] - hard["0"] == pytest.approx(0.25)
    assert hard["2"] == 0.0  # one candidate says nothing about its batch
    run = {cid: {**cand(cid, 1, {}), "scores": by} for cid, by in scores.items()}
    fair = shrunk_scores(run, ["a", "b"], 0.0, by_batch=True)
    assert fair["a"] - fair["b"] == pytest.approx(0.5)


def test_select_beam_ignores_candidates_outside_the_beam() -> None:
    state = state_of([cand("c0", 0, {1: 0.1}), cand("c1", 1, {1: 1.0}), cand("c2", 1, {1: 0.5})],
                     iteration=1, beam=["c0", "c2"])
    assert select_beam(state, 3) == ["c2", "c0"]


def test_select_beam_ties_keep_the_older_then_the_lower_id_whatever_the_order() -> None:
    cands = [cand("c0", 0, {2: 0.5}), cand("c3", 1, {2: 0.5}), cand("c10", 2, {2: 0.5}),
             cand("c9", 2, {2: 0.5}), cand("c11", 2, {2: 0.5})]
    expected = ["c0", "c3", "c9", "c10", "c11"]  # ids compare as numbers: c9 < c10
    rng = random.Random(7)
    for _ in range(20):
        beam = [c["id"] for c in cands]
        rng.shuffle(beam)
        assert select_beam(state_of(cands, 2, beam=beam), 5) == expected
    assert select_beam(state_of(cands, 2), 3) == expected[:3]


def test_select_beam_ties_go_to_shorter_outputs_on_the_given_rows() -> None:
    """A child that scores like its parent in a third of the output tokens ranks first
    (svamp: the calculation-only child tied the start prompt on two minibatches and,
    ranked behind it as the younger, was never validated)."""
    cands = [cand("c0", 0, {1: 0.5}), cand("c1", 1, {1: 0.5}), cand("c2", 1, {1: 0.25})]
    records = {f"{cid}|train|{i}": {"output": "7", "score": 0.5, "output_tokens": n}
               for cid, n in (("c0", 170), ("c1", 57), ("c2", 10)) for i in (0, 1)}
    state = state_of(cands, 1, records=records)
    assert select_beam(state, 3, short_rows=[0, 1]) == ["c1", "c0", "c2"]
    assert select_beam(state, 3) == ["c0", "c1", "c2"]  # without: the older first


# --- stop_reason ------------------------------------------------------------------------


def ctx(**settings: Any) -> Any:
    return context(scripted(), **settings)


def running_state(**extra: Any) -> dict[str, Any]:
    """Iteration 1 of 10; the best minibatch score went 0.5 -> 0.6."""
    return state_of([cand("c0", 0, {0: 0.5, 1: 0.4}), cand("c1", 1, {1: 0.6})], iteration=1,
                    **extra)


def spent(state: dict[str, Any], calls: int) -> dict[str, Any]:
    """`state` after `calls` LLM calls."""
    return {**state, "usage": {"generate": {"calls": calls, "input_tokens": 0,
                                            "output_tokens": 0}}}


def test_no_stop_condition_holds() -> None:
    state = running_state()
    assert stop_reason(state, ctx(max_iterations=10), select_beam(state, 3)) is None


def test_stop_at_max_iterations() -> None:
    state = running_state()
    kept = select_beam(state, 3)
    assert stop_reason(state, ctx(max_iterations=1), kept) == "max_iterations"
    assert stop_reason(state, ctx(max_iterations=2), kept) is None
    zero = state_of([cand("c0", 0, {0: 0.5})], iteration=0)
    assert stop_reason(zero, ctx(max_iterations=0), ["c0"]) == "max_iterations"


def test_stop_at_target_score() -> None:
    state = running_state()
    kept = select_beam(state, 3)
    assert stop_reason(state, ctx(target_score=0.6), kept) == "target_score"
    assert stop_reason(state, ctx(target_score=0.61), kept) is None


def test_stop_when_patience_runs_out() -> None:
    # best per iteration: 0.5, 0.7, 0.7, 0.6 -> two iterations without a new record
    state = state_of([cand("c0", 0, {0: 0.5, 1: 0.7, 2: 0.2, 3: 0.1}),
                      cand("c1", 2, {2: 0.7, 3: 0.6})], iteration=3)
    assert iterations_without_improvement(state) == 2
    kept = select_beam(state, 3)
    assert stop_reason(state, ctx(patience=2), kept) == "patience"
    assert stop_reason(state, ctx(patience=3), kept) is None


def test_patience_resets_on_a_new_best() -> None:
    state = state_of([cand("c0", 0, {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.8})], iteration=3)
    assert iterations_without_improvement(state) == 0
    assert stop_reason(state, ctx(patience=1), ["c0"]) is None


def test_stop_when_the_budget_cannot_pay_for_another_iteration() -> None:
    settings = dict(max_llm_calls=1000, minibatch_size=2, beam_width=3, candidates_per_prompt=2)
    state = running_state()
    kept = select_beam(state, 3)  # 2 candidates
    c = ctx(**settings)
    need = iteration_cost(len(kept), 4, c, 0.5) + final_reserve(state, c)
    # iteration_cost: per parent 2 gradients + 1 summary + 2 edits, 2 children screened on
    # 2 rows, the parent on 2 rows and the half of the children expected to pass on 2 rows
    assert iteration_cost(2, 4, c, 0.5) == 2 * (2 + 1 + 2 + 2 * 2 + 2 + 1 * 2)
    # without screening every child is scored on the batch (the paper's plan)
    assert iteration_cost(2, 4, ctx(**settings, screen_size=0)) == 2 * (2 + 1 + 2 + 3 * 2)
    assert final_reserve(state, c) == 4 * 4  # (beam_width + 1) prompts x 4 train rows
    assert stop_reason(spent(state, 1000 - need), c, kept) is None
    assert affordable(spent(state, 1000 - need), c, kept) == 2

    # one call short for both: the search goes on from the best one
    assert affordable(spent(state, 1000 - need + 1), c, kept) == 1
    assert stop_reason(spent(state, 1000 - need + 1), c, kept) is None
    # not even one fits: stop
    need_one = iteration_cost(1, 4, c, 0.5) + final_reserve(state, c)
    assert affordable(spent(state, 1000 - need_one + 1), c, kept) == 0
    assert stop_reason(spent(state, 1000 - need_one + 1), c, kept) == "budget"


def test_the_unneeded_part_of_the_final_reserve_buys_one_more_iteration() -> None:
    # beam 3 reserves 4 prompts x 4 rows for the end; the finalists so far are c1 and c0
    c = ctx(max_llm_calls=1000, minibatch_size=2, beam_width=3, candidates_per_prompt=2)
    state = running_state()
    kept = select_beam(state, 3)
    assert sorted(kept) == ["c0", "c1"]
    need_one = iteration_cost(1, 4, c, 0.5)

    short = spent(state, 1000 - need_one - final_reserve(state, c) + 1)
    assert affordable(short, c, kept) == 0
    assert narrowed_finalists(short, c, kept) == 2  # 2 prompts x 4 rows are enough
    assert final_reserve({**short, "finalists_cap": 2}, c) == 2 * 4
    assert stop_reason({**short, "finalists_cap": 2}, c, kept) is None
    # nothing to gain when the reserve for 2 prompts does not leave enough either
    assert narrowed_finalists(spent(state, 1000 - need_one - 2 * 4 + 1), c, kept) is None
    # nor when the budget pays anyway, or once the finalists are capped
    assert narrowed_finalists(spent(state, 0), c, kept) is None
    assert narrowed_finalists({**short, "finalists_cap": 2}, c, kept) is None
    # the start prompt alone: room for it and one child (a cap of 1 would pay for
    # iterations whose children could never be validated)
    alone = {**state_of([cand("c0", 0, {0: 0.5, 1: 0.4})], iteration=1),
             "usage": short["usage"]}
    assert narrowed_finalists(alone, c, ["c0"]) == 2
    # nor when the finalists so far already fill the worst case
    four = state_of([cand("c0", 0, {0: 0.1, 1: 0.1})] + [cand(f"c{i}", 1, {1: 0.5})
                                                       for i in (1, 2, 3)], iteration=1)
    assert narrowed_finalists({**four, "usage": short["usage"]}, c,
                              select_beam(four, 3)) is None


def test_capped_finalists_keep_the_best_that_fit_with_the_initial_prompt() -> None:
    state = {"finalists_cap": 2}
    assert fit_finalists(state, ["c5", "c1"]) == ["c5"]  # c0 is validated anyway
    assert fit_finalists(state, ["c5", "c0", "c1"]) == ["c5", "c0"]
    assert fit_finalists({"finalists_cap": 1}, ["c5", "c0"]) == ["c0"]
    assert fit_finalists({}, ["c5", "c1", "c2"]) == ["c5", "c1", "c2"]


@pytest.mark.parametrize("cap", range(60, 181, 15))
def test_with_capped_finalists_every_finalist_is_validated_on_every_row(cap: int) -> None:
    # the start prompt answers every 2nd row, edit n every (n % 3 + 2)th: children tie
    # or lose, the start prompt stays in the beam and most caps end narrowed (1 or 2)
    def generate(text: str) -> str:
        m = re.search(r"(?:v(\d+): )?[qv](\d+)", text)
        n, i = int(m.group(1) or 0), int(m.group(2))  # type: ignore[union-attr]
        return "B" if i % (n % 3 + 2) == 0 else "A"

    events: list[dict[str, Any]] = []
    result = optimizer(scripted(generate=generate), minibatch_size=4, beam_width=2,
                       candidates_per_prompt=2, max_iterations=50, max_llm_calls=cap
                       ).optimize("{question}", qa_rows(24), qa_rows(6, "v"),
                                  on_event=events.append)
    assert result.total_calls <= cap
    finalists = [cid for cid, c in result.candidates.items() if c["val_score"] is not None]
    assert "c0" in finalists and result.best_id in finalists
    for cid in finalists:
        assert all(f"{cid}|val|{i}" in result.records for i in range(6))
    capped = [e["finalists"] for e in events if e["event"] == "finalists_cap"]
    if capped:
        assert len(finalists) <= capped[0]


def test_capped_finalists_happen_in_a_run() -> None:
    # the property above is not empty: at 150 calls the run narrows to 2 finalists
    # and then spends the whole cap
    events: list[dict[str, Any]] = []
    result = optimizer(scripted(generate=lambda t: "B" if t.endswith(("0", "2", "4", "6", "8"))
                                else "A"),
                       minibatch_size=4, beam_width=2, candidates_per_prompt=2,
                       max_iterations=50, max_llm_calls=150).optimize(
        "{question}", qa_rows(24), qa_rows(6, "v"), on_event=events.append)
    assert any(e["event"] == "finalists_cap" for e in events)
    assert result.total_calls >= 0.85 * 150


def test_should_stop_callback() -> None:
    state = running_state()
    kept = select_beam(state, 3)
    polled: list[int] = []

    def should_stop() -> str | None:
        polled.append(1)
        return "user_cancelled" if len(polled) > 1 else None

    c = ctx(should_stop=should_stop)
    assert stop_reason(state, c, kept) is None
    assert stop_reason(state, c, kept) == "user_cancelled"
    # the callback is asked before the other conditions
    assert stop_reason(state, ctx(should_stop=lambda: "halt", max_iterations=1), kept) == "halt"


def test_stop_when_nothing_was_scored() -> None:
    state = state_of([cand("c0", 0, {0: 0.5}), cand("c1", 1, {})], iteration=1)
    kept = select_beam(state, 3)
    assert kept == []
    assert stop_reason(state, ctx(), kept) == "no_scored_candidates"


def test_a_stop_reason_already_in_the_state_wins() -> None:
    state = running_state(stop_reason="budget")
    assert stop_reason(state, ctx(should_stop=lambda: "halt"), []) == "budget"


# --- screening, pruning and the route edge ---------------------------------------------


def rec(score: float) -> dict[str, Any]:
    return {"output": "x", "score": score}


def screening_state(child_rows: dict[int, float], **extra: Any) -> dict[str, Any]:
    """c0 (iteration 0: rows 0, 1 failed) and its child c1 under screening on rows 0, 1."""
    c1 = cand("c1", 1, {})
    c1["screen"] = {"rows": [0, 1], "parent_score": 0.0, "score": None, "passed": None}
    records = {"c0|train|0": rec(0.0), "c0|train|1": rec(0.0), "c0|train|2": rec(1.0),
               "c0|train|3": rec(0.0)}
    records.update({f"c1|train|{i}": rec(v) for i, v in child_rows.items()})
    return state_of([cand("c0", 0, {0: 0.0}), c1], iteration=1, records=records,
                    batch=[2, 3], **extra)


def test_a_child_that_beats_its_parent_on_its_screen_is_scored_on_the_batch() -> None:
    c = ctx(beam_width=2, minibatch_size=2)
    state = screening_state({0: 1.0, 1: 0.0})
    update, events = advance(state, c)
    assert update["candidates"]["c1"]["screen"]["passed"] is True
    assert update["candidates"]["c1"]["screen"]["score"] == 0.5
    assert update["beam"] == ["c0", "c1"] and "stop_reason" not in update
    assert [e["event"] for e in events] == ["screened"]
    merged = {**state, **update, "candidates": {**state["candidates"], **update["candidates"]}}
    assert route(merged, SimpleNamespace(context=c)) == "more"  # c1 has no batch rows yet


def test_a_child_no_better_than_its_parent_on_its_screen_leaves_the_beam() -> None:
    c = ctx(beam_width=2, minibatch_size=2)
    update, events = advance(screening_state({0: 0.0, 1: 0.0}), c)
    assert update["candidates"]["c1"]["screen"]["passed"] is False
    assert "c1" not in update["beam"]
    # c0 is scored on the batch (rows 2, 3) and kept; it failed row 3, so no more rows
    assert update["candidates"]["c0"]["scores"]["1"] == 0.5
    assert update["beam"] == ["c0"]
    assert [e["event"] for e in events] == ["screened", "scored"]


def test_once_the_batch_is_scored_the_beam_is_pruned_and_sent_to_gradient() -> None:
    c = ctx(beam_width=1, minibatch_size=2)
    state = screening_state({0: 1.0, 1: 1.0, 2: 1.0, 3: 0.5})
    update, _ = advance(state, c)
    assert update["beam"] == ["c1"]  # 0.75 on the batch against c0's 0.5
    merged = {**state, **update, "candidates": {**state["candidates"], **update["candidates"]}}
    assert route(merged, SimpleNamespace(context=c)) == "prune"


def test_a_solved_batch_draws_more_rows_then_stops_when_train_is_solved() -> None:
    c = ctx(beam_width=1, minibatch_size=2)
    state = state_of([cand("c0", 0, {})], iteration=0, batch=[0, 1],
                     records={"c0|train|0": rec(1.0), "c0|train|1": rec(1.0)})
    update, events = advance(state, c)
    assert sorted(update["batch"]) == [0, 1, 2, 3] and "stop_reason" not in update
    assert events[-1]["event"] == "more_rows"
    state = {**state, **update, "candidates": state["candidates"],
             "records": {**state["records"], "c0|train|2": rec(1.0), "c0|train|3": rec(1.0)}}
    update, _ = advance(state, c)
    assert update["stop_reason"] == "train_solved"
    assert update["candidates"]["c0"]["scores"] == {"0": 1.0}


def test_route_stops_once_a_reason_is_set() -> None:
    state = state_of([cand("c0", 0, {0: 0.5})], iteration=0, stop_reason="budget")
    assert route(state, SimpleNamespace(context=ctx())) == "stop"


def test_a_cut_short_iteration_keeps_the_last_scored_beam() -> None:
    # the budget ran out in iteration 2 before anything was scored
    state = state_of([cand("c0", 0, {0: 0.0, 1: 0.0}), cand("c1", 1, {1: 0.5}),
                      cand("c2", 2, {})], iteration=2, beam=["c1", "c2"], stop_reason="budget")
    assert beam_on_stop(state, ctx(beam_width=1)) == ["c1"]


def test_a_partly_scored_iteration_fills_the_beam_from_the_last_ranking() -> None:
    state = state_of([cand("c1", 1, {1: 0.9}), cand("c4", 1, {1: 0.1}), cand("c5", 2, {2: 0.4}),
                      cand("c6", 2, {})], iteration=2, stop_reason="budget")
    assert beam_on_stop(state, ctx(beam_width=2)) == ["c5", "c1"]  # this iteration's first
    assert beam_on_stop(state, ctx(beam_width=1)) == ["c5"]


# --- budget arithmetic ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "n_train", "n_val", "expected"),
    [
        # without screening (the paper's plan): first minibatch 2; one parent: 2 gradients
        # + 1 summary + 2 edits + 3*2 outputs; reserve: 4 prompts x 3 val rows
        (dict(minibatch_size=2, screen_size=0), 5, 3, 2 + (2 + 1 + 2 + 6) + 12),
        # a judge doubles every scored output
        (dict(minibatch_size=2, criteria="ok", screen_size=0), 5, 3,
         4 + (2 + 1 + 2 + 12) + 24),
        # ablation: k = min(candidates_per_prompt, gradients), no summary
        (dict(minibatch_size=2, summarize=False, candidates_per_prompt=3, screen_size=0), 5, 0,
         2 + (2 + 0 + 2 + 3 * 2) + 4 * 5),
        (dict(minibatch_size=4, max_gradients_per_prompt=1, beam_width=1, screen_size=0), 3, 0,
         3 + (1 + 1 + 2 + 3 * 3) + 2 * 3),
        (dict(minibatch_size=2, max_iterations=0), 5, 3, 2 + 0 + 12),
        # screening (default 2 rows): each child's screen, the parent on the next batch,
        # and half the children (the prior pass rate) on the batch
        (dict(minibatch_size=2), 5, 3, 2 + (2 + 1 + 2 + 2 * 2 + 2 + 1 * 2) + 12),
        (dict(minibatch_size=4, max_gradients_per_prompt=1, beam_width=1), 3, 0,
         3 + (1 + 1 + 2 + 2 * 1 + 3 + 1 * 3) + 2 * 3),
    ],
)
def test_calls_needed_for_one_iteration(settings: dict, n_train: int, n_val: int,
                                        expected: int) -> None:
    assert calls_needed_for_one_iteration(n_train, n_val, ctx(**settings)) == expected


# --- the bench: members a budget cut took out of the search ----------------------------


def svamp_benched_state() -> dict[str, Any]:
    """svamp seed 0, ef4e780: c1 (the reply form) tied the start prompt on three batches,
    was benched when the budget paid for one more iteration from one parent, and c10,
    a child of the start prompt with one batch at 0.5, took its place at the stop."""
    cands = [cand("c0", 0, {0: 0.75, 1: 0.75, 2: 0.5, 3: 0.75}),
             cand("c1", 1, {1: 0.75, 2: 0.5, 3: 0.75}), cand("c10", 4, {}), cand("c11", 4, {})]
    records = {f"{c}|train|{i}": {"output": "7", "score": float(i < n)}
               for c, n in (("c0", 4), ("c10", 2)) for i in range(4)}
    return state_of(cands, iteration=4, beam=["c0", "c10"], benched=["c1"],
                    records=records, batch=[0, 1, 2, 3])


@pytest.mark.parametrize("pooled", [True, False])
def test_at_the_stop_a_benched_member_competes_for_the_final_validation(pooled: bool) -> None:
    update, _ = advance(svamp_benched_state(),
                        ctx(beam_width=2, max_iterations=4, pooled_ranking=pooled))
    assert update["stop_reason"] == "max_iterations"
    # pooled (shrunk by one batch): c0 0.73, c1 0.66, c10 0.57; the paper's way ranks
    # the last batch only, where c1 has no score
    assert update["beam"] == (["c0", "c1"] if pooled else ["c0", "c10"])


def test_a_stop_cutting_an_iteration_short_validates_the_benched_member_too() -> None:
    state = svamp_benched_state()
    state["candidates"]["c10"]["scores"] = {"4": 0.5}
    state["iteration"] = 4
    assert beam_on_stop(state, ctx(beam_width=2)) == ["c0", "c1"]


def test_a_budget_cut_benches_the_members_it_takes_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import langchain_gradsum.beam as beam_mod

    state = svamp_benched_state()
    state.update(iteration=3, beam=["c0", "c1"], benched=[], batch=[0, 1, 2, 3],
                 records={f"{c}|train|{i}": {"output": "7", "score": float(i < 3)}
                          for c in ("c0", "c1") for i in range(4)})
    for c in ("c0", "c1"):
        state["candidates"][c]["scores"].pop("3")
    monkeypatch.setattr(beam_mod, "affordable", lambda s, c, kept: 1)
    update, events = advance(state, ctx(beam_width=2, max_iterations=10))
    assert update["beam"] == ["c0"] and update["benched"] == ["c1"]
    assert [e["kept"] for e in events if e["event"] == "beam_cut"] == [1]
