"""budgetforce's Prometheus metrics inside vLLM's server: on vLLM's own `/metrics`, beside vLLM's.

They live in prometheus_client's default registry, which `/metrics` of vLLM's API server serves
(with one API server process; vLLM's multiprocess mode collects only its own metrics).
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def _metrics() -> dict[str, Any]:
    from prometheus_client import REGISTRY, Counter, Histogram

    def get(name: str, make: Any) -> Any:
        existing = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - one set per process, even if re-imported
        return existing if existing is not None else make()

    return {
        "choices": get(
            "budgetforce_budgeted_choices_total",
            lambda: Counter("budgetforce_budgeted_choices", "Choices generated under a thinking budget.", ["strategy"]),
        ),
        "thinking": get(
            "budgetforce_thinking_tokens_total",
            lambda: Counter("budgetforce_thinking_tokens", "Thinking tokens of budgeted choices."),
        ),
        "forced": get(
            "budgetforce_forced_ends_total",
            lambda: Counter("budgetforce_forced_ends", "Thinking ends forced at the maximum."),
        ),
        "waits": get(
            "budgetforce_waits_inserted_total",
            lambda: Counter("budgetforce_waits_inserted", "Early closes replaced by a wait string (where known)."),
        ),
        "per_choice": get(
            "budgetforce_thinking_tokens_per_choice",
            lambda: Histogram(
                "budgetforce_thinking_tokens_per_choice", "Thinking tokens per budgeted choice.",
                buckets=(0, 16, 64, 256, 1024, 4096, 16384, 65536),
            ),
        ),  # fmt: skip
        "unenforced": get(
            "budgetforce_unenforced_choices_total",
            lambda: Counter(
                "budgetforce_unenforced_choices", "Budgeted choices whose budget was not forced (`enforced: false`).",
                ["reason"],
            ),
        ),
        "rejected": get(
            "budgetforce_rejected_requests_total",
            lambda: Counter("budgetforce_rejected_requests", "Requests refused by the budget layer.", ["code"]),
        ),
    }


def record_choice(report: dict[str, Any]) -> None:
    """One finished choice's budget report."""
    if report.get("strategy") is None:
        return
    m = _metrics()
    m["choices"].labels(report["strategy"]).inc()
    m["thinking"].inc(report["thinking_tokens"])
    m["per_choice"].observe(report["thinking_tokens"])
    if report.get("forced_end"):
        m["forced"].inc()
    if report.get("waits_inserted"):
        m["waits"].inc(report["waits_inserted"])
    if report.get("enforced") is False:
        m["unenforced"].labels(report.get("unenforced_reason") or "unknown").inc()


def record_rejection(code: str) -> None:
    _metrics()["rejected"].labels(code).inc()
