"""`BudgetForcingEngine`: a vLLM AsyncLLM with budget forcing installed, and both strategies.

The engine strategy hands each request's plan to `BudgetForcingLogitsProcessor` through
`SamplingParams.extra_args`; the rounds strategy is s1's loop (stop at a close attempt, append
the wait ids, resubmit) on the same engine, relying on prefix caching. Both are driven by
`ThinkingController`, and both stream reasoning deltas, then answer deltas.

The generation sources (`engine_source`, `rounds_source`, the answer prober) take an `EngineSide`:
any vLLM engine client, so the budget layer on vLLM's own server runs the same loops on its
`engine_client` (`budgetforce.server.orchestrate`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from budgetforce.core.budget import Budget, BudgetError
from budgetforce.core.controller import Action, ForcingPlan, Phase, ThinkingController
from budgetforce.core.decoding import Splitter
from budgetforce.core.report import BudgetStats, Tally, choice_report
from budgetforce.core.profile import Profile, ResolvedProfile, detect_profile, get_profile
from budgetforce.vllm.slots import seed_key

log = logging.getLogger(__name__)

PROCESSOR_FQCN = "budgetforce.vllm:EngineForcing"
Messages = Sequence[dict[str, Any]]
FinishReason = Literal["stop", "length"]  # vLLM's `abort` and `error` raise `GenerationFailed` instead


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of a streamed completion; the last one carries `finish_reason` and `stats`."""

    reasoning: str = ""
    answer: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    stats: BudgetStats | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    reasoning: str
    answer: str
    token_ids: list[int]
    reasoning_token_ids: list[int]
    answer_token_ids: list[int]
    stats: BudgetStats
    finish_reason: FinishReason
    prompt_tokens: int


class EngineDeadError(RuntimeError):
    """The vLLM engine has died; the server answers 503."""


class GenerationFailed(RuntimeError):
    """vLLM ended a request with `abort` or `error`: the output is cut, not an answer; the server answers 500.

    Args:
        reason: vLLM's finish reason, `"abort"` or `"error"`.
    """

    def __init__(self, reason: str) -> None:
        what = "aborted" if reason == "abort" else "failed"
        super().__init__(f"the engine {what} the generation (finish reason `{reason}`)")
        self.reason = reason


class BudgetForcingEngine:
    """A vLLM engine that honours per-request thinking budgets.

    Example:
        >>> engine = BudgetForcingEngine.from_model("path/to/model")      # doctest: +SKIP
        >>> out = await engine.generate(messages, Budget(min_thinking_tokens=2000), temperature=0.6)  # doctest: +SKIP
        >>> out.reasoning, out.answer, out.stats                           # doctest: +SKIP
    """

    def __init__(self, llm: Any, tokenizer: Any, profile: ResolvedProfile, model_name: str, max_model_len: int) -> None:
        from budgetforce.vllm.stats_board import StatsBoard

        self.llm = llm
        self.tokenizer = tokenizer
        self.profile = profile
        self.model_name = model_name
        self.max_model_len = max_model_len
        self._observer_plan = profile.plan(Budget())  # delimiters only: tracks spans, forces nothing
        self._board = StatsBoard()
        self._side = EngineSide(llm, tokenizer, self._observer_plan, self._board)

    @classmethod
    def from_model(
        cls,
        model: str | Path,
        profile: str | Profile | None = None,
        served_model_name: str | None = None,
        **engine_kwargs: Any,
    ) -> BudgetForcingEngine:
        """Start a vLLM AsyncLLM for ``model`` with the budget-forcing processor registered.

        ``engine_kwargs`` go to vLLM's `AsyncEngineArgs` (tensor_parallel_size, max_model_len, ...).
        """
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        model = str(model)
        tokenizer = AutoTokenizer.from_pretrained(engine_kwargs.get("tokenizer") or model)
        chosen = profile if isinstance(profile, Profile) else get_profile(profile) if profile else detect_profile(tokenizer, model)
        resolved = chosen.resolve(tokenizer)
        processors = list(engine_kwargs.pop("logits_processors", None) or [])
        args = AsyncEngineArgs(model=model, logits_processors=[PROCESSOR_FQCN, *processors], **engine_kwargs)
        llm = AsyncLLM.from_engine_args(args)
        max_len = llm.model_config.max_model_len
        log.info("serving %s with profile %s (max_model_len %d)", model, chosen.name, max_len)
        return cls(llm, tokenizer, resolved, served_model_name or model, max_len)

    def shutdown(self) -> None:
        self.llm.shutdown()
        self._board.close()

    @property
    def is_dead(self) -> bool:
        return bool(self.llm.errored)

    # -- preparing a request ----------------------------------------------------------------
    def prompt_ids(self, prompt: Messages | str | list[int]) -> list[int]:
        """Token ids of a chat (rendered with the model's template) or a raw prompt, thinking opened."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        elif prompt and isinstance(prompt[0], int):
            ids = list(prompt)  # type: ignore[arg-type]
        else:
            ids = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        return self.profile.open_thinking(list(ids))

    def plan(self, budget: Budget | None, max_tokens: int | None) -> ForcingPlan | None:
        """The request's plan, or None without a budget; raises `BudgetError` for impossible ones."""
        return plan_for(self.profile, budget, max_tokens)

    def _max_tokens(self, prompt_len: int, max_tokens: int | None) -> int:
        room = self.max_model_len - prompt_len
        if room <= 0:
            raise BudgetError(
                f"the prompt has {prompt_len} tokens, which leaves no room within the model's "
                f"context of {self.max_model_len}", param="messages"
            )
        if max_tokens is not None and max_tokens > room:
            raise BudgetError(
                f"`max_tokens` ({max_tokens}) exceeds the {room} tokens left in the model's context "
                f"({self.max_model_len}) after the {prompt_len}-token prompt", param="max_tokens"
            )
        return room if max_tokens is None else max_tokens

    # -- generating -----------------------------------------------------------------------
    async def generate(
        self, prompt: Messages | str | list[int], budget: Budget | None = None, **sampling: Any
    ) -> Completion:
        """One completion. ``sampling``: vLLM `SamplingParams` fields (max_tokens, temperature, seed, ...)."""
        deltas = [d async for d in self.stream(prompt, budget, **sampling)]
        ids = [t for d in deltas for t in d.token_ids]
        last = deltas[-1]
        assert last.stats is not None and last.finish_reason is not None
        prompt_ids = self.prompt_ids(prompt)
        ctl = ThinkingController(self._observer_plan, prompt_ids)
        for t in ids:
            ctl.accept(t)
        reasoning_ids, answer_ids = ctl.split(ids)
        return Completion(
            reasoning="".join(d.reasoning for d in deltas),
            answer="".join(d.answer for d in deltas),
            token_ids=ids,
            reasoning_token_ids=reasoning_ids,
            answer_token_ids=answer_ids,
            stats=last.stats,
            finish_reason=last.finish_reason,
            prompt_tokens=len(prompt_ids),
        )

    async def stream(
        self,
        prompt: Messages | str | list[int],
        budget: Budget | None = None,
        request_id: str | None = None,
        **sampling: Any,
    ) -> AsyncIterator[Delta]:
        """Stream a completion: reasoning deltas, then answer deltas, then a final `Delta` with stats.

        Bad budgets raise `BudgetError` before anything is submitted.
        """
        if self.is_dead:
            raise EngineDeadError("the engine has stopped")
        prompt_ids = self.prompt_ids(prompt)
        max_tokens = self._max_tokens(len(prompt_ids), sampling.pop("max_tokens", None))
        plan = self.plan(budget, max_tokens)
        request_id = request_id or uuid.uuid4().hex
        strategy = budget.strategy if plan is not None and budget is not None else None
        tally = Tally()
        if plan is not None and strategy == "rounds":
            source = rounds_source(self._side, prompt_ids, plan, max_tokens, request_id, sampling, tally)
        else:
            from vllm.inputs import TokensPrompt

            params = sampling_params(sampling, max_tokens=max_tokens)
            prompt = TokensPrompt(prompt_token_ids=prompt_ids)
            source = engine_source(self._side, prompt, prompt_ids, params, plan, request_id, tally, budget)
        splitter = Splitter(self.tokenizer, ThinkingController(self._observer_plan, prompt_ids))
        async for ids, finish, _ in source:
            reasoning, answer = splitter.push(ids)
            if finish is not None:
                rest_reasoning, rest_answer = splitter.flush()
                reasoning, answer = reasoning + rest_reasoning, answer + rest_answer
            if finish is None:
                if ids:
                    yield Delta(reasoning, answer, tuple(ids))
                continue
            yield Delta(reasoning, answer, tuple(ids), finish, self._stats(splitter, plan, strategy, tally))
            return
        raise GenerationFailed("error")  # a source ends with a finish reason; this is a bug

    def _stats(self, splitter: Splitter, plan: ForcingPlan | None, strategy: str | None, tally: Tally) -> BudgetStats:
        if plan is None:
            return choice_report(splitter.ctl, splitter.ids, tally, None)
        return choice_report(splitter.ctl, splitter.ids, tally, strategy, plan.max_thinking, plan.max_answer, plan.intervention)

def plan_for(profile: ResolvedProfile, budget: Budget | None, max_tokens: int | None) -> ForcingPlan | None:
    """A request's plan under ``max_tokens``, or None without a budget; raises `BudgetError` for impossible ones."""
    if budget is None or not budget.is_active:
        return None
    plan = profile.plan(budget)
    fitted = budget.with_answer_room(max_tokens, plan.forced_end_length)
    if fitted is not budget:  # the answer budget left the thinking a maximum
        budget, plan = fitted, profile.plan(fitted)
    budget.check_room(max_tokens, reserved=plan.forced_end_length)
    if budget.probe_every is not None and budget.strategy == "rounds":
        raise BudgetError(
            "early exit (`probe_every`) runs with the engine strategy; drop `budget_strategy: rounds`",
            param="probe_every",
        )
    return plan


@dataclass(frozen=True, slots=True)
class EngineSide:
    """What the generation sources need of an engine: vLLM's engine client (budgetforce's `AsyncLLM`,
    or the `engine_client` of vLLM's API server), the tokenizer, the delimiters-only plan and the
    stats board (None: no board, so no waits count and no early exit)."""

    client: Any
    tokenizer: Any
    observer: ForcingPlan
    board: Any = None  # budgetforce.vllm.stats_board.StatsBoard


# (new ids, the finish reason once finished, vLLM's `RequestOutput` delta: None for ids the frontend forced)
Piece = tuple[list[int], "FinishReason | None", Any]


def sampling_params(sampling: dict[str, Any], **overrides: Any) -> Any:
    """vLLM `SamplingParams` for one engine request of a source: deltas, no detokenising."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(**{**sampling, **overrides}, output_kind=RequestOutputKind.DELTA, detokenize=False)


async def engine_source(
    side: EngineSide, prompt: Any, prompt_ids: list[int], params: Any, plan: ForcingPlan | None, request_id: str,
    tally: Tally, budget: Budget | None = None, extra_args: Callable[..., dict[str, Any]] | None = None,
    **kwargs: Any,
) -> AsyncIterator[Piece]:
    """The engine strategy: one engine request, forced by the logits processor, probed for an early
    exit when the budget asks. ``extra_args(plan, board_name, key, nonce)`` says how the processor
    is told the budget and its stats-board row (default: budgetforce's engine plan; the budget layer
    sends `vllm_xargs`, which `budgetforce.vllm:BudgetForcing` reads). Fills ``tally`` before the
    last piece. ``kwargs`` go to the client's `generate`."""
    from budgetforce.vllm.wire import plan_to_args

    extra_args = extra_args or plan_to_args
    board = side.board
    key, nonce = board.acquire() if plan is not None and board is not None else (-1, 0)
    probe = _Prober(side, prompt_ids, plan, budget, request_id, key, nonce, kwargs) \
        if plan is not None and plan.early_exit and key >= 0 else None  # fmt: skip
    try:
        if plan is not None:
            params = params.clone()
            params.extra_args = {**(params.extra_args or {}), **extra_args(plan, board.name if key >= 0 else None, key, nonce)}
        ids: list[int] = []
        async for out in side.client.generate(prompt, params, request_id, **kwargs):
            o = out.outputs[0]
            ids.extend(o.token_ids)
            if probe is not None and not out.finished:
                probe.feed(o.token_ids)
            if out.finished:
                if key >= 0:
                    tally.waits = board.waits(key, nonce, ids)
                    tally.scheduled = board.scheduled_waits(key, nonce, ids)
                    tally.early_exit = board.exited(key, nonce)
                    tally.failure = board.failure(key, nonce)
                elif plan is not None:  # no board: the engine's counts cannot reach this frontend
                    tally.waits = tally.scheduled = tally.failure = None
                if probe is not None:
                    await probe.close()
                    tally.probes, tally.probe_tokens = probe.count, probe.tokens
                yield list(o.token_ids), _finish(o.finish_reason), out
                return
            yield list(o.token_ids), None, out
    finally:
        if probe is not None:
            await probe.close()
        if key >= 0:
            board.release(key)


async def rounds_source(
    side: EngineSide, prompt_ids: list[int], plan: ForcingPlan, max_tokens: int, request_id: str,
    sampling: dict[str, Any], tally: Tally, **kwargs: Any,
) -> AsyncIterator[Piece]:
    """s1's loop, per request: generate to a point where the rules act (a close attempt, a paragraph
    break, the maximum, ...), let the controller act there, resubmit. ``sampling``: `SamplingParams`
    fields; ``kwargs`` go to the client's `generate`.

    The reference for the engine strategy: under greedy decoding both give the same tokens.
    """
    from vllm.inputs import TokensPrompt

    seed0 = sampling.get("seed")
    rng_seed = seed0 if seed0 is not None else random.getrandbits(62)
    ctl = ThinkingController(plan, prompt_ids, rng_key=seed_key(rng_seed, prompt_ids))
    out: list[int] = []
    round_no = 0

    def done(reason: FinishReason) -> Piece:
        tally.waits, tally.scheduled = ctl.waits_inserted, ctl.scheduled_waits
        return [], reason, None

    while True:
        remaining = max_tokens - len(out)
        if remaining <= 0:
            yield done("length")
            return
        kind, token = ctl.action()
        if kind == Action.FORCE:
            ctl.accept(token)
            out.append(token)
            yield [token], None, None
            if ctl.answer_truncated:  # the forced end of the answer
                yield done("stop")
                return
            continue
        limit, bias = remaining, sampling.get("logit_bias")
        round_phase = ctl.phase
        if ctl.phase is Phase.THINKING:  # stop wherever the rules may act
            stops = set(plan.close_attempts)
            if ctl.quenching:
                stops |= plan.wait_firsts
            elif plan.alpha_moment > 0:
                stops |= plan.breaks
            to_event = ctl.tokens_to_event()
            if to_event is not None:
                limit = min(remaining, to_event)
            if ctl.banned_now():  # vLLM's strongest bias, over the user's
                bias = {**(bias or {}), **{t: -100.0 for t in ctl.banned_now()}}
        elif ctl.phase is Phase.BEFORE:  # stop where the thinking may open
            stops = {plan.think_start[-1]}
        else:
            stops = set(sampling.get("stop_token_ids") or ())
            if plan.max_answer is not None:
                limit = min(remaining, plan.max_answer - ctl.answer_tokens)
        # min_tokens counts the whole completion: each round owes what is still missing
        owed = max(0, min(sampling.get("min_tokens") or 0, max_tokens) - len(out))
        if ctl.just_waited:  # s1 resubmits after a wait with min_tokens=1: no close as the first token
            owed = max(owed, 1)
        round_no += 1
        seed = seed0
        if seed is not None and round_no > 1:  # fresh randomness each round (a reused seed would replay its draws)
            seed = (seed + (round_no - 1) * 0x9E3779B97F4A7C15) % (1 << 63)
        params = sampling_params(
            sampling, max_tokens=limit, stop_token_ids=sorted(stops) or None, min_tokens=min(owed, limit),
            seed=seed, logit_bias=bias,
        )
        new: list[int] = []
        reason: str | None = None
        stopped_on: int | None = None
        async for res in side.client.generate(
            TokensPrompt(prompt_token_ids=prompt_ids + out), params, f"{request_id}-{round_no}", **kwargs
        ):
            chunk = list(res.outputs[0].token_ids)
            if res.finished:
                reason = res.outputs[0].finish_reason
                # a stop token can only be the last one of a round
                if reason == "stop" and round_phase is Phase.THINKING and chunk and chunk[-1] in stops:
                    stopped_on = chunk.pop()
            for t in chunk:
                ctl.accept(t)
            out.extend(chunk)
            new.extend(chunk)
            if chunk:
                yield chunk, None, None
        if stopped_on is not None:
            if stopped_on in plan.close_attempts and ctl.guarding:  # s1: the close becomes the wait string
                replacement = ctl.action()[1]
                ctl.accept(replacement, replaced=True)
            elif stopped_on in plan.eos and not plan.is_budgeted:  # modes only: the sequence ends in its thinking
                ctl.accept(stopped_on)
                out.append(stopped_on)
                yield [stopped_on], None, None
                yield done("stop")
                return
            elif stopped_on in plan.close_attempts or stopped_on in plan.wait_firsts:
                # past the minimum an end of sequence closes (s1); past the alpha moment a wait does
                replacement = plan.think_end[0]
                ctl.accept(replacement)
            else:  # a paragraph break: kept; the controller may schedule a wait after it
                replacement = stopped_on
                ctl.accept(replacement)
            out.append(replacement)
            yield [replacement], None, None
            continue
        opened = round_phase is Phase.BEFORE and reason == "stop" and new[-1:] == [plan.think_start[-1]]
        if opened or (reason == "length" and len(out) < max_tokens):
            continue  # the thinking may have opened, or a rule's mark was reached
        yield done(_finish(reason))
        return


class _Prober:
    """Early exit by answer probes (Dynasor-CoT, DEER): every `probe_every` thinking tokens (from the
    request's minimum on, if it has one), ask the engine what the answer would be if the thinking
    closed now; `probe_agree` equal answers in a row close the thinking through the stats board
    (the processor forces the close and answer prefix at its next step).

    A probe is a side request (the prompt, the thinking so far, the close and a lead-in such as
    "The answer is"), greedy and short; the engine's prefix cache holds everything before its tail.
    Its tokens are not the request's: they are counted apart (`probes`, `probe_tokens`).
    """

    def __init__(
        self, side: EngineSide, prompt_ids: list[int], plan: ForcingPlan, budget: Budget | None,
        request_id: str, key: int, nonce: int, kwargs: dict[str, Any],
    ) -> None:
        assert budget is not None and budget.probe_every is not None
        self.side, self.plan, self.key, self.nonce = side, plan, key, nonce
        self.every, self.agree, self.max_tokens = budget.probe_every, budget.probe_agree, budget.probe_max_tokens
        lead = budget.probe_lead if budget.probe_lead is not None else DEFAULT_PROBE_LEAD
        self.tail = list(plan.think_end) + list(side.tokenizer.encode(lead, add_special_tokens=False))
        self.prompt_ids, self.request_id = prompt_ids, request_id
        # the request's adapter and scheduling, nothing that would tie a probe to its row or trace
        self.kwargs = {k: v for k, v in kwargs.items() if k in ("lora_request", "priority", "data_parallel_rank")}
        self.ctl = ThinkingController(side.observer, prompt_ids)
        self.ids: list[int] = []
        # a minimum is a minimum: probing starts once the thinking may close on its own
        self.next_at = max(self.every, plan.min_thinking)
        self.count = self.tokens = self.streak = 0
        self.last: str | None = None
        self.exit_asked = False
        self._task: asyncio.Task | None = None

    def feed(self, new_ids: Sequence[int]) -> None:
        """New tokens of the request: start a probe when the thinking has grown by `every` tokens."""
        for t in new_ids:
            self.ctl.accept(t)
            self.ids.append(t)
        if self.exit_asked or self.ctl.phase is not Phase.THINKING:
            return
        if self._task is not None and not self._task.done():
            return  # one probe at a time: a slow probe delays the next, it never queues them
        if self.ctl.thinking_tokens >= self.next_at:
            self.next_at = self.ctl.thinking_tokens + self.every
            self.count += 1
            self._task = asyncio.ensure_future(self._probe(list(self.ids), self.count))

    async def _probe(self, ids: list[int], n: int) -> None:
        from vllm.inputs import TokensPrompt

        params = sampling_params({}, max_tokens=self.max_tokens, temperature=0.0, stop_token_ids=sorted(self.plan.eos))
        got: list[int] = []
        prompt = TokensPrompt(prompt_token_ids=self.prompt_ids + ids + self.tail)
        async for res in self.side.client.generate(prompt, params, f"{self.request_id}-probe{n}", **self.kwargs):
            got.extend(res.outputs[0].token_ids)
        self.tokens += len(got)
        answer = probe_answer(self.side.tokenizer.decode([t for t in got if t not in self.plan.eos]))
        self.streak = self.streak + 1 if answer and answer == self.last else 1
        self.last = answer
        if answer and self.streak >= self.agree and not self.exit_asked:
            self.exit_asked = self.side.board.request_exit(self.key, self.nonce)

    async def close(self) -> None:
        """Stop a probe still running (the request has finished)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - a cancelled probe has nothing to say
                pass


DEFAULT_PROBE_LEAD = "\n\n**Final Answer**\n\\boxed{"  # Dynasor-CoT's probe, for models that box their answers


def probe_answer(text: str) -> str:
    r"""A probe's answer, normalised for comparison: its first line (or the boxed part), trimmed.

    Example:
        >>> probe_answer(" 226.\nWait") == probe_answer("226") == "226"
        True
    """
    text = text.split("}", 1)[0].strip().split("\n", 1)[0].strip()
    return text.rstrip(".").strip()


def _finish(reason: str | None) -> FinishReason:
    """vLLM's finish reason as the API's; `abort` and `error` raise `GenerationFailed`."""
    if reason in ("abort", "error"):
        raise GenerationFailed(reason)
    return "length" if reason == "length" else "stop"  # `stop`, and vLLM's `repetition`
