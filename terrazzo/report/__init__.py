"""TCO reports (reads plans, bundles and fleet studies; writes HTML, JSON and terminal summaries).

The fleet study (``run_study``) reproduces the prefill::decode analysis of arXiv 2507.19635;
``phases`` is the LLM phase model it and agent placement use.
"""

from terrazzo.report.agent_plan import agent_problem, plan_agent
from terrazzo.report.plan_report import (
    FleetOption,
    PlanReport,
    build_report,
    load_plans,
    print_report_summary,
    report_html,
)
from terrazzo.report.study import (
    StudyOptions,
    StudyResult,
    StudyRow,
    headline,
    run_study,
)
from terrazzo.report.study_report import print_study_summary, study_html

__all__ = [
    "agent_problem",
    "plan_agent",
    "FleetOption",
    "PlanReport",
    "build_report",
    "load_plans",
    "print_report_summary",
    "report_html",
    "StudyOptions",
    "StudyResult",
    "StudyRow",
    "headline",
    "print_study_summary",
    "run_study",
    "study_html",
]
