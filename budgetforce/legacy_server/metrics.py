"""Prometheus metrics of one app, in its own registry (two apps in a process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from budgetforce.legacy_server.protocol import BudgetReport

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40)


class Metrics:
    """Requests, tokens, thinking tokens, waits, forced ends and latencies."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "budgetforce_requests", "Requests by endpoint and HTTP status.", ["endpoint", "status"], registry=r
        )
        self.running = Gauge("budgetforce_requests_running", "Requests being generated now.", registry=r)
        self.aborted = Counter(
            "budgetforce_requests_aborted", "Requests whose client went away before the end.", ["endpoint"], registry=r
        )
        self.prompt_tokens = Counter("budgetforce_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.completion_tokens = Counter("budgetforce_completion_tokens", "Tokens generated.", registry=r)
        self.thinking_tokens = Counter(
            "budgetforce_thinking_tokens", "Generated tokens inside the thinking.", registry=r
        )
        self.waits = Counter("budgetforce_waits_inserted", "Early closes replaced by a wait string.", registry=r)
        self.forced_ends = Counter("budgetforce_forced_ends", "Thinking ends forced at the maximum.", registry=r)
        self.budgeted = Counter(
            "budgetforce_budgeted_choices", "Choices generated under a budget, by strategy.", ["strategy"], registry=r
        )
        self.latency = Histogram(
            "budgetforce_request_latency_seconds", "Request latency, start to last byte.", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "budgetforce_time_to_first_token_seconds", "Time to the first generated text.", ["endpoint"],
            buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.thinking_hist = Histogram(
            "budgetforce_thinking_tokens_per_choice", "Thinking tokens per choice.",
            buckets=(0, 16, 64, 256, 1024, 4096, 16384, 65536), registry=r,
        )  # fmt: skip

    def choice_done(self, completion_tokens: int, report: BudgetReport | None) -> None:
        self.completion_tokens.inc(completion_tokens)
        if report is None:
            return
        self.thinking_tokens.inc(report.thinking_tokens)
        self.thinking_hist.observe(report.thinking_tokens)
        if report.waits_inserted:
            self.waits.inc(report.waits_inserted)
        if report.forced_end:
            self.forced_ends.inc()
        if report.strategy is not None:
            self.budgeted.labels(report.strategy).inc()
