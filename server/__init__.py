"""Thinking budgets on vLLM's own OpenAI-compatible server: a budget layer, not a server of its own.

    vllm serve MODEL --logits-processors budgetforce.vllm:BudgetForcing \\
        --middleware budgetforce.server.BudgetMiddleware --reasoning-parser deepseek_r1

or `budgetforce serve`, which starts vLLM's server with those flags. `rewrite` turns a request's
budget fields into `vllm_xargs` (400s before anything runs), `annotate` adds the per-choice
`budget`, `reasoning_content` and `reasoning_tokens` to vLLM's responses, `middleware` is the ASGI
glue, `launch` builds the command line of `budgetforce serve`.
"""

from __future__ import annotations

__all__ = ["BudgetMiddleware"]


def __getattr__(name: str):  # the middleware pulls in Starlette: import it only when asked for
    if name == "BudgetMiddleware":
        from budgetforce.server.middleware import BudgetMiddleware

        return BudgetMiddleware
    raise AttributeError(name)
