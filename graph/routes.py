"""Routers: small typed functions from state to the next node."""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END
from langgraph.runtime import Runtime

from luthitune.graph.state import Context, RunState


def route_interview(state: RunState) -> Literal["interview", "consent_check"]:
    return "consent_check" if state.get("interview_done") else "interview"


def route_consent(state: RunState) -> Literal["interview", "draft_constitution", "__end__"]:
    if state.get("ended"):
        return END
    return "draft_constitution" if state.get("consent") in {"yes", "conditional"} else "interview"


def route_draft(state: RunState) -> Literal["draft_constitution", "generate_scenarios", "__end__"]:
    if state.get("draft_status") == "approved":
        return "generate_scenarios"
    return END if state.get("ended") else "draft_constitution"


def route_training(state: RunState) -> Literal["evaluate", "__end__"]:
    return END if state.get("ended") or not state.get("adapter_path") else "evaluate"


def route_cycle(state: RunState, runtime: Runtime[Context]) -> Literal["generate_scenarios", "__end__"]:
    """After a revision: the next cycle starts from the new version, up to ``max_cycles`` cycles."""
    if state.get("ended"):
        return END
    return "generate_scenarios" if state.get("cycle", 0) < runtime.context.max_cycles else END
