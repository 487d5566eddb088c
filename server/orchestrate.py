"""The strategies the budget layer runs itself on vLLM's server: `rounds` (s1's loop) and early exit.

Both need more than one engine request per choice (the loop's continuations; the answer probes),
which no logits processor can issue. vLLM's route still does everything else: it renders the
prompt with the model's chat template, builds the sampling parameters, and writes the response,
full or streamed. The budget layer takes over only at the route's one call into the engine,
`engine_client.generate`: `install` wraps that method once per API server process, and a request
the middleware registered (`register`, by the nonce it puts into `vllm_xargs`) runs budgetforce's
own sources (`budgetforce.vllm.engine.rounds_source`, `engine_source` with its answer prober) on the
real client, their pieces handed back to the route as vLLM's `RequestOutput`s. Every other request
goes straight to vLLM.

The probes are side requests of their own (prefix-cached: they share the prompt and the thinking
so far), so the route's `usage` never counts their tokens; the report counts them apart
(`probes`, `probe_tokens`). Each choice of an `n` > 1 request runs its own source, with the seed
`seed + i`, as vLLM seeds its choices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from budgetforce.core.budget import Budget
from budgetforce.vllm.engine import EngineSide, GenerationFailed, Tally, engine_source, plan_for, rounds_source
from budgetforce.vllm.wire import BOARD_KEY_KEY, BOARD_NAME_KEY, NONCE_KEY

log = logging.getLogger("budgetforce.server")
# `SamplingParams` fields the rounds loop carries into each continuation (it sets the rest per round)
ROUND_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "seed", "logit_bias", "allowed_token_ids", "bad_words", "min_tokens", "stop_token_ids", "ignore_eos",
)  # fmt: skip
INT64 = 1 << 64


@dataclass
class Orchestrated:
    """One registered request: its budget, the engine side it runs on, and each choice's tally once final."""

    budget: Budget
    side: EngineSide
    profile: Any  # budgetforce.core.profile.ResolvedProfile
    tallies: dict[int, Tally] = field(default_factory=dict)

    def tally(self, index: int, ids: list[int]) -> Tally | None:
        """Choice ``index``'s tally once its source has finished; None before (a choice cut short)."""
        del ids  # the source counted on its own ids
        return self.tallies.get(index)


_REGISTERED: dict[int, Orchestrated] = {}  # by the nonce in the request's `vllm_xargs`


def register(nonce: int, run: Orchestrated) -> None:
    _REGISTERED[nonce] = run


def unregister(nonce: int) -> None:
    _REGISTERED.pop(nonce, None)


def install(engine_client: Any) -> Any:
    """Wrap ``engine_client.generate`` (once) so registered requests run here; returns the real client's
    `generate` holder for the sources (their own engine requests must not come back here)."""
    real = getattr(engine_client, "_budgetforce_real", None)
    if real is not None:
        return real
    generate = engine_client.generate

    async def orchestrating_generate(prompt: Any, params: Any, request_id: str, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        run = _REGISTERED.get(_nonce(params))
        if run is None:
            async for out in generate(prompt, params, request_id, *args, **kwargs):
                yield out
            return
        async for out in _outputs(run, prompt, params, request_id, kwargs):
            yield out

    real = _RealClient(generate)
    engine_client._budgetforce_real = real
    engine_client.generate = orchestrating_generate
    return real


@dataclass(frozen=True)
class _RealClient:
    """vLLM's own `generate`, for the sources' engine requests."""

    generate: Any


def _nonce(params: Any) -> int | None:
    args = getattr(params, "extra_args", None)
    return args.get(NONCE_KEY) if isinstance(args, dict) else None


def _prompt(prompt: Any) -> tuple[list[int], str | None]:
    """The rendered prompt's token ids and text (vLLM's `EngineInput`, a dict in 0.26-0.32)."""
    get = prompt.get if isinstance(prompt, dict) else lambda k, d=None: getattr(prompt, k, d)
    ids = get("prompt_token_ids")
    if ids is None or get("type", "token") != "token":
        raise ValueError("`budget_strategy: rounds` and early exit need a text prompt (no images, audio or embeddings)")
    return list(ids), get("prompt")


async def _outputs(run: Orchestrated, prompt: Any, params: Any, request_id: str, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    """The registered request's choices as vLLM's `RequestOutput`s, in the route's output kind."""
    from vllm.outputs import RequestOutput
    from vllm.sampling_params import RequestOutputKind

    prompt_ids, prompt_text = _prompt(prompt)
    budget = run.budget
    if budget.strategy == "rounds" and getattr(params, "structured_outputs", None) is not None:
        raise ValueError("`budget_strategy: rounds` cannot carry structured outputs (each round would restart the grammar)")
    plan = plan_for(run.profile, budget, params.max_tokens)  # the answer budget's maximum, as the engine's
    extra = {k: v for k, v in (params.extra_args or {}).items() if k not in (NONCE_KEY, BOARD_NAME_KEY, BOARD_KEY_KEY)}
    whole = params.output_kind != RequestOutputKind.DELTA
    choices = [_Choice(i, run.side.tokenizer, params, prompt_ids, whole) for i in range(max(params.n, 1))]
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def produce(choice: _Choice) -> None:
        seed = None if params.seed is None else (params.seed + choice.index + (1 << 63)) % INT64 - (1 << 63)
        rid = request_id if len(choices) == 1 else f"{request_id}-{choice.index}"
        tally = Tally()
        if plan is not None and budget.strategy == "rounds":
            sampling = {k: getattr(params, k) for k in ROUND_FIELDS if getattr(params, k, None) is not None}
            sampling["seed"] = seed
            source = rounds_source(run.side, prompt_ids, plan, params.max_tokens, rid, sampling, tally, **_round_kwargs(kwargs))
        else:
            one = params.clone()
            one.n, one.seed, one.output_kind, one.extra_args = 1, seed, RequestOutputKind.DELTA, extra or None
            source = engine_source(run.side, prompt, prompt_ids, one, plan, rid, tally, budget, _xargs(budget), **kwargs)
        try:
            async for ids, finish, out in source:
                if finish is not None:
                    run.tallies[choice.index] = tally
                queue.put_nowait((choice.index, (ids, finish, out)))
        except GenerationFailed as exc:  # vLLM's own finish reason: the route answers it as it does for vLLM
            queue.put_nowait((choice.index, ([], exc.reason, None)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the route, which reports it as vLLM's errors
            queue.put_nowait((choice.index, exc))

    tasks = [asyncio.ensure_future(produce(c)) for c in choices]
    left = len(choices)
    first: Any = None  # the first engine output: the prompt's metadata (cached tokens, prompt logprobs)
    try:
        while left:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            ids, finish, out = item
            if first is None and out is not None:
                first = out
            choice = choices[index]
            delta = choice.push(ids, finish, out)
            left -= finish is not None
            if params.output_kind == RequestOutputKind.DELTA and (delta.token_ids or finish is not None):
                yield _request_output(RequestOutput, request_id, prompt_text, prompt_ids, [delta], not left, first)
        if params.output_kind != RequestOutputKind.DELTA:
            yield _request_output(RequestOutput, request_id, prompt_text, prompt_ids, [c.whole() for c in choices], True, first)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()  # the source's engine requests are aborted


def _xargs(budget: Budget) -> Any:
    """The budget and its stats-board row as `vllm_xargs`: what vLLM's served processor reads."""
    from budgetforce.server.rewrite import budget_xargs

    def xargs(plan: Any, board: str | None, key: int, nonce: int) -> dict[str, Any]:
        row = {BOARD_NAME_KEY: board, BOARD_KEY_KEY: key, NONCE_KEY: nonce} if board is not None else {}
        return {**budget_xargs(budget), **row}

    return xargs


def _round_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The route's `generate` options a continuation keeps: the adapter and scheduling, not the prompt's
    reasoning state (each round's prompt is the last round's, plus its tokens)."""
    return {k: v for k, v in kwargs.items() if k in ("lora_request", "trace_headers", "priority", "data_parallel_rank")}


def _request_output(cls: Any, request_id: str, text: str | None, ids: list[int], outputs: list[Any], finished: bool,
                    first: Any) -> Any:  # fmt: skip
    return cls(
        request_id, text, ids, getattr(first, "prompt_logprobs", None), outputs, finished,
        metrics=getattr(first, "metrics", None), num_cached_tokens=getattr(first, "num_cached_tokens", None),
    )


class _Choice:
    """One choice's text and ids so far. The rounds loop runs its engine requests undetokenised (its
    continuations and forced ids must read as one text), so its text is decoded here; the engine
    strategy's text, ids and logprobs are vLLM's own."""

    def __init__(self, index: int, tokenizer: Any, params: Any, prompt_ids: list[int], whole: bool) -> None:
        from budgetforce.core.decoding import IncrementalDecoder

        self.index = index
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=params.skip_special_tokens, context=prompt_ids)
        self.keep = whole  # the route wants one final output: keep the logprobs to hand over at the end
        self.ids: list[int] = []
        self.text = ""
        self.logprobs: Any = None
        self.cumulative: float | None = None
        self.finish: str | None = None
        self.stop_reason: Any = None

    def push(self, ids: list[int], finish: str | None, out: Any) -> Any:
        """The next piece (vLLM's output ``out``, or ids the loop forced), as a `CompletionOutput` delta."""
        from vllm.outputs import CompletionOutput

        o = out.outputs[0] if out is not None else None
        text = (o.text or "") if o is not None else self.decoder.push(ids)
        logprobs = getattr(o, "logprobs", None)
        if finish is not None:
            if o is None:
                text += self.decoder.flush()
            self.finish, self.stop_reason = finish, getattr(o, "stop_reason", None)
        if logprobs is not None:
            self.cumulative = o.cumulative_logprob
            if self.keep:
                if self.logprobs is None:
                    self.logprobs = logprobs
                else:
                    self.logprobs.extend(logprobs)
        self.ids.extend(ids)
        self.text += text
        return CompletionOutput(self.index, text, list(ids), self.cumulative, logprobs, finish_reason=finish,
                                stop_reason=self.stop_reason if finish else None)  # fmt: skip

    def whole(self) -> Any:
        from vllm.outputs import CompletionOutput

        return CompletionOutput(self.index, self.text, list(self.ids), self.cumulative, self.logprobs,
                                finish_reason=self.finish, stop_reason=self.stop_reason)  # fmt: skip
