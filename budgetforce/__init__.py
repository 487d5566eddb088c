"""budgetforce: s1-style thinking budgets (minimum and maximum) enforced inside vLLM."""

from budgetforce.core.budget import Budget, BudgetError
from budgetforce.core.controller import ForcingPlan, ThinkingController
from budgetforce.core.profile import PRESETS, Profile, ProfileError, detect_profile, get_profile

__all__ = [
    "PRESETS",
    "Budget",
    "BudgetError",
    "BudgetForcingEngine",
    "ForcingPlan",
    "Profile",
    "ProfileError",
    "ThinkingController",
    "detect_profile",
    "get_profile",
]


def __getattr__(name: str):  # the engine pulls in vLLM: import it only when asked for
    if name in ("BudgetForcingEngine", "BudgetStats", "Completion", "Delta"):
        from budgetforce.vllm import engine

        return getattr(engine, name)
    raise AttributeError(name)
