"""Placement: a Problem (tasks × device classes) → a Plan minimising USD/hour under the SLA.

Solvers: exact MILP (HiGHS), a fast heuristic (chains + Lagrangian DP + local search), and
baselines (homogeneous, HEFT, greedy, Mélange-style replica mixes).
"""

from terrazzo.placement.adapters import (
    TaskGraph,
    is_task_graph_file,
    load_task_graph,
    make_problem,
    parse_task_graph,
    problem_from_graph,
    problem_from_tasks,
    task_graph_to_ir,
)
from terrazzo.placement.api import SOLVERS, diagnose, lower_bound, plan, solve, to_problem
from terrazzo.placement.fleet import SLA, Fleet, PricingOptions, parse_duration_s
from terrazzo.placement.greedy import solve_greedy
from terrazzo.placement.heft import solve_heft
from terrazzo.placement.heuristic import solve_heuristic
from terrazzo.placement.homogeneous import solve_homogeneous
from terrazzo.placement.llm_graph import LLMGraphs, build_llm_graphs
from terrazzo.placement.llm_scale import (
    LLMPlan,
    LLMPlannerOptions,
    LLMStage,
    LLMTraffic,
    llm_fleet_default,
    plan_llm,
    plan_llm_melange,
    plan_llm_single_class,
)
from terrazzo.placement.melange import solve_melange
from terrazzo.placement.milp import MILPResult, lp_lower_bound, solve_milp
from terrazzo.placement.mlir import PLACED_ATTRS, ModelSource, placed_graph, plan_to_mlir
from terrazzo.placement.placed import (
    PLACED_SOLVER,
    check_placed,
    placed_rps,
    placed_sla,
    placed_source,
    plan_from_placed,
    read_placed,
)
from terrazzo.placement.plan import Plan, Stage, Transfer, build_plan, compute_stages
from terrazzo.placement.problem import Evaluation, Problem

__all__ = [
    "PLACED_ATTRS",
    "PLACED_SOLVER",
    "SLA",
    "SOLVERS",
    "Evaluation",
    "Fleet",
    "LLMGraphs",
    "LLMPlan",
    "LLMPlannerOptions",
    "LLMStage",
    "LLMTraffic",
    "MILPResult",
    "ModelSource",
    "Plan",
    "PricingOptions",
    "Problem",
    "Stage",
    "TaskGraph",
    "Transfer",
    "build_llm_graphs",
    "build_plan",
    "check_placed",
    "compute_stages",
    "diagnose",
    "is_task_graph_file",
    "llm_fleet_default",
    "load_task_graph",
    "lower_bound",
    "lp_lower_bound",
    "make_problem",
    "parse_duration_s",
    "parse_task_graph",
    "placed_graph",
    "placed_rps",
    "placed_sla",
    "placed_source",
    "plan",
    "plan_llm",
    "plan_llm_melange",
    "plan_llm_single_class",
    "plan_from_placed",
    "plan_to_mlir",
    "problem_from_graph",
    "problem_from_tasks",
    "read_placed",
    "solve",
    "solve_greedy",
    "solve_heft",
    "solve_heuristic",
    "solve_homogeneous",
    "solve_melange",
    "solve_milp",
    "task_graph_to_ir",
    "to_problem",
]
