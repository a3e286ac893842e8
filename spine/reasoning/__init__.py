"""The reasoning system as a library: problems, prompts, extraction, grading, pipelines, evaluation.

Public names: `extract_answer(text)` → the extracted answer string or None;
`grade(predicted, gold)` → a `Verdict` with `.correct` and the deciding `.rule`.
"""
from .evaluate import EvalReport, EvalWriter, evaluate
from .extract import extract, extract_answer
from .grade import Verdict, answers_equivalent, grade
from .pipelines import ProblemEngine, SelfConsistency, SingleSample, make_pipeline
from .problems import Problem, load_problems
from .prompts import render_prompt
from .vote import majority_vote

__all__ = ["EvalReport", "EvalWriter", "ProblemEngine", "Problem", "SelfConsistency", "SingleSample", "Verdict", "answers_equivalent",
           "evaluate", "extract", "extract_answer", "grade", "load_problems", "make_pipeline", "majority_vote",
           "render_prompt"]
