"""The bundled demo tasks: data, start prompts and evaluators fit together."""

from __future__ import annotations

import pytest

from langchain_gradsum._templates import template_variables
from langchain_gradsum.demo import DEMOS, demo_rows


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_each_demo_task_has_rows_its_start_prompt_can_render(name: str) -> None:
    rows = demo_rows(name)
    demo = DEMOS[name]
    assert len(rows) >= 40
    for row in rows:
        assert set(template_variables(demo.start_prompt)) <= set(row["inputs"])
        assert demo.evaluator({"output": str(row["outputs"]["answer"])},
                              row["outputs"])["score"] == 1.0


def test_the_default_demo_starts_from_a_prompt_whose_replies_fail_exact_match() -> None:
    # what the 1.5B model replies to the start prompt: a sentence, not the label
    demo = DEMOS["sarcasm"]
    res = demo.evaluator({"output": "Yes, this tweet is sarcastic."}, {"answer": "Yes"})
    assert res["score"] == 0.0 and "adds other text" in res["comment"]
