"""The benchmark's plan for the λ task: default methods, budgets and its own baseline, the weighted sum (read only by
:mod:`ray_bilevel.benchmark`, through ``RewardLambdaTask.benchmark``; the oracle is the default 13-point sweep of λ)."""
from __future__ import annotations

from ray_bilevel.benchspec import BenchmarkSpec
from ray_bilevel.space import Budget, TaskMethod
from ray_bilevel.tasks.reward_lambda.settings import weight_space

__all__ = ["BASELINES", "BUDGETS", "SPEC", "WEIGHTED_SUM_SPEC"]

#: The paper's comparison (docs/algorithms.md §5): grid, random, Bayesian, weighted sum, plus TPE, the default and
#: the dense oracle sweep (the reference of every method's regret).
BASELINES = ("default", "bilevel", "grid", "random", "bayes", "tpe", "weighted_sum", "dense")

#: A fixed-λ trial is a few guided rounds (~20 s on 2 cores): four trials per searcher, two rounds on two cores.
BUDGETS: dict[str, Budget] = {
    "quick": Budget(trials=4, iterations=3,
                    methods=("default", "bilevel", "grid", "random", "bayes", "weighted_sum", "dense")),
}


#: ``RewardLambdaTask.benchmark``: the weighted sum of docs/algorithms.md §5 (guidance on ``r2 + w · r1``, a grid over
#: ``w``) is the task's own baseline.
SPEC = BenchmarkSpec(baselines=BASELINES, budgets=BUDGETS,
                     task_methods={"weighted_sum": TaskMethod(task="weighted_sum", space=weight_space(),
                                                              searcher="grid")})
#: ``WeightedSumTask.benchmark`` (run on its own: its search space is the weight w).
WEIGHTED_SUM_SPEC = BenchmarkSpec(baselines=("default", "grid", "random", "bayes", "tpe"), budgets=BUDGETS)
