"""`BudgetForcingEngine`: a vLLM AsyncLLM with budget forcing installed, and both strategies.

The engine strategy hands each request's plan to `BudgetForcingLogitsProcessor` through
`SamplingParams.extra_args`; the rounds strategy is s1's loop (stop at a close attempt, append
the wait ids, resubmit) on the same engine, relying on prefix caching. Both are driven by
`ThinkingController`, and both stream reasoning deltas, then answer deltas.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from budgetforce.budget import Budget, BudgetError
from budgetforce.controller import Action, ForcingPlan, Phase, ThinkingController
from budgetforce.decoding import IncrementalDecoder
from budgetforce.profile import Profile, ResolvedProfile, detect_profile, get_profile

log = logging.getLogger(__name__)

PROCESSOR_FQCN = "budgetforce.vllm:EngineForcing"
Messages = Sequence[dict[str, Any]]
FinishReason = Literal["stop", "length"]  # vLLM's `abort` and `error` raise `GenerationFailed` instead


@dataclass(frozen=True, slots=True)
class BudgetStats:
    thinking_tokens: int
    waits_inserted: int | None  # None: the engine could not share it (another node, a failed row)
    forced_end: bool
    strategy: str | None  # None: the request had no budget


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
        from budgetforce.forcing import StatsBoard

        self.llm = llm
        self.tokenizer = tokenizer
        self.profile = profile
        self.model_name = model_name
        self.max_model_len = max_model_len
        self._observer_plan = profile.plan(Budget())  # delimiters only: tracks spans, forces nothing
        self._board = StatsBoard()

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
        if budget is None or not budget.is_active:
            return None
        plan = self.profile.plan(budget)
        budget.check_room(max_tokens, reserved=plan.forced_end_length)
        return plan

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
        if plan is not None and strategy == "rounds":
            source = self._rounds(prompt_ids, plan, max_tokens, request_id, sampling)
        else:
            source = self._engine(prompt_ids, plan, max_tokens, request_id, sampling)
        splitter = Splitter(self.tokenizer, ThinkingController(self._observer_plan, prompt_ids))
        async for ids, finish, waits in source:
            reasoning, answer = splitter.push(ids)
            if finish is not None:
                rest_reasoning, rest_answer = splitter.flush()
                reasoning, answer = reasoning + rest_reasoning, answer + rest_answer
            if finish is None:
                if ids:
                    yield Delta(reasoning, answer, tuple(ids))
                continue
            thinking = splitter.ctl.thinking_tokens
            # The engine forces the close exactly when the span reaches the maximum.
            forced = plan is not None and plan.max_thinking is not None and thinking >= plan.max_thinking
            yield Delta(reasoning, answer, tuple(ids), finish, BudgetStats(thinking, waits, forced, strategy))
            return

    def _params(self, sampling: dict[str, Any], **overrides: Any) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(**{**sampling, **overrides}, output_kind=RequestOutputKind.DELTA, detokenize=False)

    async def _engine(
        self, prompt_ids: list[int], plan: ForcingPlan | None, max_tokens: int, request_id: str, sampling: dict[str, Any]
    ) -> AsyncIterator[tuple[list[int], FinishReason | None, int]]:
        """Yields (new ids, finish reason once finished, waits inserted)."""
        from vllm.inputs import TokensPrompt

        from budgetforce.forcing import plan_to_args

        key, nonce = self._board.acquire() if plan is not None else (-1, 0)
        try:
            extra = plan_to_args(plan, self._board.name, key, nonce) if plan is not None else None
            params = self._params(sampling, max_tokens=max_tokens, extra_args=extra)
            ids: list[int] = []
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id):
                o = out.outputs[0]
                ids.extend(o.token_ids)
                if out.finished:
                    waits = self._board.waits(key, nonce, ids) if key >= 0 else 0
                    yield list(o.token_ids), _finish(o.finish_reason), waits
                    return
                yield list(o.token_ids), None, 0
        finally:
            if key >= 0:
                self._board.release(key)

    async def _rounds(
        self, prompt_ids: list[int], plan: ForcingPlan, max_tokens: int, request_id: str, sampling: dict[str, Any]
    ) -> AsyncIterator[tuple[list[int], FinishReason | None, int]]:
        """s1's loop, per request: generate to a close attempt, append the wait ids, resubmit."""
        from vllm.inputs import TokensPrompt

        ctl = ThinkingController(plan, prompt_ids)
        out: list[int] = []
        round_no = 0
        while True:
            remaining = max_tokens - len(out)
            if remaining <= 0:
                yield [], "length", ctl.waits_inserted
                return
            kind, token = ctl.action()
            if kind == Action.FORCE:
                ctl.accept(token)
                out.append(token)
                yield [token], None, 0
                continue
            limit = remaining
            if kind in (Action.GUARD, Action.REDIRECT, Action.BAN):  # budgeted thinking: stop at any close attempt
                stops = sorted(plan.close_attempts)
                if ctl.tokens_to_max is not None:
                    limit = min(remaining, ctl.tokens_to_max)
            elif ctl.phase is Phase.BEFORE:  # stop where the thinking may open
                stops = [plan.think_start[-1]]
            else:
                stops = []
            # min_tokens counts the whole completion: each round owes what is still missing
            owed = max(0, min(sampling.get("min_tokens") or 0, max_tokens) - len(out))
            if ctl.just_waited:  # s1 resubmits after a wait with min_tokens=1: no close as the first token
                owed = max(owed, 1)
            round_no += 1
            seed = sampling.get("seed")
            if seed is not None and round_no > 1:  # fresh randomness each round (a reused seed would replay its draws)
                seed = (seed + (round_no - 1) * 0x9E3779B97F4A7C15) % (1 << 63)
            params = self._params(
                sampling, max_tokens=limit, stop_token_ids=stops or None, min_tokens=min(owed, limit), seed=seed
            )
            new: list[int] = []
            reason: str | None = None
            stopped_on: int | None = None
            async for res in self.llm.generate(
                TokensPrompt(prompt_token_ids=prompt_ids + out), params, f"{request_id}-{round_no}"
            ):
                chunk = list(res.outputs[0].token_ids)
                if res.finished:
                    reason = res.outputs[0].finish_reason
                    # a stop token can only be the last one of a round
                    if reason == "stop" and kind != Action.FREE and chunk and chunk[-1] in stops:
                        stopped_on = chunk.pop()
                for t in chunk:
                    ctl.accept(t)
                out.extend(chunk)
                new.extend(chunk)
                if chunk:
                    yield chunk, None, 0
            if stopped_on is not None:
                if ctl.guarding:  # s1: ignore the close and append the wait string instead
                    replacement = ctl.action()[1]
                    ctl.accept(replacement, replaced=True)
                else:  # past the minimum: an end of sequence inside the thinking closes it
                    replacement = plan.think_end[0]
                    ctl.accept(replacement)
                out.append(replacement)
                yield [replacement], None, 0
                continue
            opened = kind == Action.FREE and reason == "stop" and bool(stops) and new[-1:] == stops
            if opened or (reason == "length" and kind != Action.FREE):
                continue  # the thinking may have opened, or its maximum was reached
            yield [], _finish(reason), ctl.waits_inserted
            return


def _finish(reason: str | None) -> FinishReason:
    """vLLM's finish reason as the API's; `abort` and `error` raise `GenerationFailed`."""
    if reason in ("abort", "error"):
        raise GenerationFailed(reason)
    return "length" if reason == "length" else "stop"  # `stop`, and vLLM's `repetition`


class Splitter:
    """Routes streamed ids to the reasoning or the answer text, following an observing controller.

    Delimiters are shown nowhere; a forced answer prefix belongs to the answer. Reasoning ids
    that could be the start of a multi-token close are held back until that is decided.
    """

    def __init__(self, tokenizer: Any, ctl: ThinkingController) -> None:
        self.ctl = ctl
        self._reasoning = IncrementalDecoder(tokenizer)
        self._answer = IncrementalDecoder(tokenizer)
        self._held: list[int] = []

    def push(self, ids: list[int]) -> tuple[str, str]:
        r_ids: list[int] = []
        a_ids: list[int] = []
        closed = ""
        ctl = self.ctl
        end = ctl.plan.think_end
        for t in ids:
            before = ctl.phase
            ctl.accept(t)
            if before is Phase.THINKING and ctl.phase is Phase.THINKING:
                if t in ctl.plan.eos:
                    continue
                self._held.append(t)
                keep = _close_prefix(self._held, end)
                r_ids.extend(self._held[: len(self._held) - keep])
                del self._held[: len(self._held) - keep]
            elif before is Phase.THINKING:
                self._held.clear()  # they were the close delimiter
                closed = self._reasoning.push(r_ids) + self._reasoning.flush()  # the reasoning is complete
                r_ids = []
            elif before is Phase.ANSWERING or ctl.phase is Phase.BEFORE:
                a_ids.append(t)
        reasoning = closed + (self._reasoning.push(r_ids) if r_ids else "")
        return reasoning, self._answer.push(a_ids) if a_ids else ""

    def flush(self) -> tuple[str, str]:
        """At the end: both texts give up what they held back."""
        held = self._reasoning.push(self._held) if self.ctl.phase is Phase.THINKING else ""
        self._held = []
        return held + self._reasoning.flush(), self._answer.flush()


def _close_prefix(held: list[int], end: tuple[int, ...]) -> int:
    """Length of the longest suffix of ``held`` that is a proper prefix of ``end``."""
    for k in range(min(len(held), len(end) - 1), 0, -1):
        if tuple(held[-k:]) == end[:k]:
            return k
    return 0
