"""GRAD-SUM prompt optimization for LangChain, as a LangGraph graph.

    from langchain_gradsum import GradSumOptimizer
    result = GradSumOptimizer("openai:gpt-4o-mini", task_description=..., criteria=...)\
        .optimize(prompt, train=rows, val=val_rows)
    result.best_prompt
"""

from langchain_gradsum.data import LangSmithDataset
from langchain_gradsum.evaluators import (
    choice_match,
    contains_answer,
    exact_match,
    numeric_match,
)
from langchain_gradsum.graph import build_graph, create_gradsum_graph
from langchain_gradsum.optimizer import GradSumOptimizer, OptimizationError, OptimizationResult
from langchain_gradsum.prompts import MetaPrompts
from langchain_gradsum.state import Candidate, GradSumContext, GradSumState

__all__ = [
    "Candidate",
    "GradSumContext",
    "GradSumOptimizer",
    "GradSumState",
    "LangSmithDataset",
    "MetaPrompts",
    "OptimizationError",
    "OptimizationResult",
    "build_graph",
    "choice_match",
    "contains_answer",
    "create_gradsum_graph",
    "exact_match",
    "numeric_match",
]

__version__ = "0.1.0"
