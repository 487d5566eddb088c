"""Schemathesis against the server's own OpenAPI spec: generated chat requests never get a 5xx.

Examples are bounded (few choices, few tokens) so the run stays quick on two CPU cores;
both valid and invalid bodies are generated.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.server
MAX_TOKENS = 8


def bound(body: Any) -> None:
    """Keep generated requests cheap without making them valid or invalid."""
    if not isinstance(body, dict):
        return
    if isinstance(body.get("n"), int) and body["n"] > 2:
        body["n"] = 2
    for key in ("max_completion_tokens", "max_tokens"):
        if isinstance(body.get(key), int) and body[key] > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if not isinstance(body.get("max_completion_tokens"), int) and "max_tokens" not in body:
        body["max_completion_tokens"] = MAX_TOKENS
    if isinstance(body.get("min_tokens"), int) and body["min_tokens"] > MAX_TOKENS:
        body["min_tokens"] = MAX_TOKENS
    body.setdefault("seed", 0)  # sampled requests are seeded, so a run is repeatable


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_chat_spec_finds_no_server_errors(live_server: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server}/openapi.json")
    operation = schema["/v1/chat/completions"]["POST"]
    statuses: list[int] = []

    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        bound(case.body)
        response = case.call(base_url=live_server, timeout=60)
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    check()
    assert statuses and all(s < 500 for s in statuses)
    if mode == GenerationMode.POSITIVE:
        assert 200 in statuses  # the generator does reach the engine
