"""The response side of the budget layer: vLLM's responses and stream chunks, annotated per choice.

Each choice's token ids (vLLM's `return_token_ids`, which the layer always asks for) run through
an observing `ThinkingController` (delimiters only, forces nothing), which counts the thinking
exactly as budgetforce's engine does. The layer then adds, per choice, the `budget` object
(`thinking_tokens`, `waits_inserted`, `forced_end`, `strategy`), `reasoning_content` beside vLLM's
`reasoning`, `usage.completion_tokens_details.reasoning_tokens`, and cuts the answer (only the
answer) at the request's stop strings. Where vLLM has no reasoning parser for the text (text
completions, or a chat server without `--reasoning-parser`) it splits the text on the ids itself.
The plain middle chunks of a chat stream that needs nothing else (`Annotator.lean`) are rewritten
as bytes (`Annotator.plain_event`): the same output without a parse and a re-serialisation each.

`waits_inserted` comes from the processor's stats board (`budgetforce.vllm.stats_board.StatsBoard`, named by
`BUDGETFORCE_STATS_BOARD`); it is null where the board is absent and for n > 1 (one row per request).
A request the layer runs itself (`rounds`, early exit: `budgetforce.server.orchestrate`) has each
choice's counts from its own source instead, `n` > 1 included.

The modes beyond s1 add keys only to requests that use them (`Budget.report_keys`): an answer
budget `answer_tokens` (after the close, a forced answer prefix included, end-of-sequence
excluded) and `answer_truncated`; an intervention `intervened` (its forced ids are in the
thinking); scheduled waits `scheduled_waits` (from the stats board, as `waits_inserted`); early
exit `early_exit` (agreeing probes closed the thinking, which counts as a forced end), `probes` and
`probe_tokens` (the side requests, which the usage does not count); the logit-margin exit `early_exit`
(from the stats board) and `exit_tokens_saved` (the maximum's thinking left unused, null without one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from budgetforce.core.budget import Budget
from budgetforce.core.controller import ThinkingController
from budgetforce.core.decoding import Splitter
from budgetforce.core.report import Tally, choice_report
from budgetforce.core.vote import majority
from budgetforce.server.metrics import record_choice
from budgetforce.server.rewrite import Prepared, ServedModel
from budgetforce.core.stops import StopCutter


# The byte patterns of a plain middle chunk (`Annotator.plain_event`). Each has a quote right after a
# letter, which inside a JSON string is always escaped (`\"`): none can match inside a text.
_PLAIN_DELTA = b'"choices":[{"index":0,"delta":'
_PLAIN_TAIL = b',"logprobs":null,"finish_reason":null,"token_ids":['
_PLAIN_END = b',"logprobs":null,"finish_reason":null}]}'
_REASONING = b'{"reasoning":"'
_REASONING_CONTENT = b'","reasoning_content":"'
_CONTENT = b'{"content":"'


@dataclass(frozen=True)
class BoardRow:
    """A single-choice request's row on the processor's stats board: its counts once the engine is done."""

    board: Any  # budgetforce.vllm.stats_board.StatsBoard
    key: int
    nonce: int

    def tally(self, index: int, ids: list[int]) -> Tally | None:
        del index  # one row, one choice
        b, key, nonce = self.board, self.key, self.nonce
        return Tally(waits=b.waits(key, nonce, ids), scheduled=b.scheduled_waits(key, nonce, ids),
                     early_exit=b.exited(key, nonce), failure=b.failure(key, nonce))


@dataclass
class _Choice:
    index: int
    ctl: ThinkingController
    prompt_len: int
    cutter: StopCutter | None
    splitter: Splitter | None = None  # when the layer splits the text itself
    tokens: int = 0
    done: bool = False
    ids: list[int] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)  # the answer text as sent (kept for a vote only)


class Annotator:
    """Annotates one request's response: `json_body` for a full response, `chunk` per stream event."""

    def __init__(self, prepared: Prepared, model: ServedModel, stats: Any = None) -> None:
        self.p = prepared
        self.model = model
        # where each choice's counts come from (`tally(index, ids)`): a `BoardRow`, an orchestrated run
        self.stats = stats
        self.observer = model.profile.plan(Budget())
        budget = prepared.budget
        self.report_keys = budget.report_keys if budget is not None else ()
        # the forced ids of an intervention, to find in the thinking (the same ids the processor forces)
        self.intervention = (
            tuple(model.profile.encode(budget.thinking_intervention)) if "intervened" in self.report_keys else ()
        )
        self.prompt: list[int] | None = None  # chat: one prompt for every choice
        self.choices: dict[int, _Choice] = {}
        self.head: dict[str, Any] = {}  # id, object, created, model of the stream's chunks
        self.finished = 0
        # A stream whose middle chunks need nothing but their ids counted, the ids dropped and the
        # reasoning copied to `reasoning_content` has them rewritten as bytes (`plain_event`).
        p = prepared
        self.lean = (p.stream and p.endpoint == "chat" and p.choices == 1 and not p.split_text and not p.stops
                     and not p.hide_reasoning and not p.vote and not p.wants_token_ids)  # fmt: skip

    # -- per choice -------------------------------------------------------------------------
    def _choice(self, index: int, prompt: list[int] | None) -> _Choice:
        st = self.choices.get(index)
        if st is None:
            prompt = list(prompt if prompt is not None else self.prompt or [])
            ctl = ThinkingController(self.observer, prompt)
            cutter = StopCutter(self.p.stops) if self.p.stops else None
            splitter = None
            if self.p.split_text and not self.p.echo:

                splitter = Splitter(self.model.tokenizer, ThinkingController(self.observer, prompt))
            st = self.choices[index] = _Choice(index, ctl, len(prompt), cutter, splitter)
        return st

    def _feed(self, st: _Choice, ids: list[int] | None) -> None:
        for t in ids or ():
            st.ctl.accept(t)
        st.tokens += len(ids or ())
        if self.stats is not None or self.intervention:
            st.ids.extend(ids or ())

    def report(self, st: _Choice) -> dict[str, Any]:
        """A finished choice's `budget` object: the core's report (`choice_report`), in the wire's keys."""
        budget = self.p.budget
        tally = self.stats.tally(st.index, st.ids) if self.stats is not None else None  # None: nobody can say
        if budget is None:
            r = choice_report(st.ctl, st.ids, tally, None)
            return {"thinking_tokens": r.thinking_tokens, "waits_inserted": r.waits_inserted, "forced_end": False,
                    "strategy": None}  # fmt: skip
        r = choice_report(st.ctl, st.ids, tally, budget.strategy, budget.max_thinking_tokens, budget.max_answer_tokens,
                          self.intervention)  # fmt: skip
        out: dict[str, Any] = {"thinking_tokens": r.thinking_tokens, "waits_inserted": r.waits_inserted,
                               "forced_end": r.forced_end, "strategy": r.strategy, "enforced": r.enforced}  # fmt: skip
        if r.unenforced_reason is not None:
            out["unenforced_reason"] = r.unenforced_reason
        extra = {"answer_tokens": r.answer_tokens, "answer_truncated": r.answer_truncated, "intervened": r.intervened,
                 "scheduled_waits": r.scheduled_waits, "early_exit": r.early_exit, "probes": r.probes,
                 "probe_tokens": r.probe_tokens, "exit_tokens_saved": r.exit_tokens_saved}  # fmt: skip
        out.update({k: extra[k] for k in self.report_keys})
        return out

    def _finish(self, st: _Choice) -> dict[str, Any]:
        st.done = True
        self.finished += 1
        report = self.report(st)
        record_choice(report)
        return report

    @property
    def reasoning_tokens(self) -> int:
        return sum(st.ctl.thinking_tokens for st in self.choices.values())

    @property
    def all_done(self) -> bool:
        """Every choice has ended (finished, or cut by a stop string)."""
        return self.finished >= self.p.choices

    def _usage(self, usage: dict[str, Any] | None) -> None:
        if isinstance(usage, dict):
            details = usage.get("completion_tokens_details")
            details = dict(details) if isinstance(details, dict) else {}
            details["reasoning_tokens"] = self.reasoning_tokens
            usage["completion_tokens_details"] = details

    def _reasoning(self, holder: dict[str, Any], reasoning: str | None) -> None:
        """`reasoning` and `reasoning_content` (the same text), or neither when it is hidden."""
        if self.p.hide_reasoning:
            holder.pop("reasoning", None)
            holder.pop("reasoning_content", None)
        elif reasoning is not None:
            holder["reasoning"] = holder["reasoning_content"] = reasoning

    # -- full responses ---------------------------------------------------------------------
    def json_body(self, body: dict[str, Any]) -> dict[str, Any]:
        if "prompt_token_ids" in body:
            self.prompt = body["prompt_token_ids"] if self.p.endpoint == "chat" else None
            if not self.p.wants_token_ids:
                body.pop("prompt_token_ids")
        for choice in body.get("choices") or []:
            st = self._choice(choice.get("index", 0), choice.get("prompt_token_ids"))
            ids = list(choice.get("token_ids") or [])
            if not self.p.wants_token_ids:
                choice.pop("token_ids", None)
                choice.pop("prompt_token_ids", None)
            self._feed(st, ids)
            holder = choice.get("message") if self.p.endpoint == "chat" else choice
            if not isinstance(holder, dict):
                continue
            key = "content" if self.p.endpoint == "chat" else "text"
            if st.splitter is not None:
                reasoning, answer = self._split(st, ids)
                holder[key] = answer
                self._reasoning(holder, reasoning)
            else:
                self._reasoning(holder, holder.get("reasoning"))
            if st.cutter is not None and isinstance(holder.get(key), str):
                text, cut = st.cutter.push(holder[key])
                if cut:
                    holder[key] = text + self._kept_stop(st)
                    choice["finish_reason"] = "stop"
                    choice["stop_reason"] = st.cutter.matched
                else:
                    holder[key] = text + st.cutter.flush()
            if self.p.hide_reasoning and self.p.endpoint == "chat":
                choice["logprobs"] = None  # as vLLM does when the reasoning is hidden: they would show it
            if self.p.vote and isinstance(holder.get(key), str):
                st.answer.append(holder[key])
            choice["budget"] = self._finish(st)
        self._usage(body.get("usage"))
        if self.p.vote:
            body["vote"] = self.vote()
        return body

    def vote(self) -> dict[str, Any]:
        """The majority over the choices' answers (`budget_aggregate: "vote"`), and the thinking spent in all."""
        texts = ["".join(self.choices[i].answer) if i in self.choices else "" for i in range(self.p.choices)]
        v = majority(texts, self.p.vote_grader)  # type: ignore[arg-type]
        return {"answer": v.answer, "votes": v.votes, "share": v.share, "choices": v.choices, "index": v.index,
                "keys": list(v.keys), "grader": self.p.vote_grader or "exact",
                "thinking_tokens": self.reasoning_tokens}  # fmt: skip

    def vote_chunks(self) -> list[dict[str, Any]]:
        """What a voting stream adds before `[DONE]`: one chunk with the vote and no choices."""
        return [{**self.head, "choices": [], "vote": self.vote()}] if self.p.vote else []

    def _kept_stop(self, st: _Choice) -> str:
        """The stop string itself, when the request asked for it (`include_stop_str_in_output`)."""
        return (st.cutter.matched or "") if self.p.include_stop and st.cutter is not None else ""

    def _split(self, st: _Choice, ids: list[int]) -> tuple[str, str]:
        reasoning, answer = st.splitter.push(ids)
        rest_r, rest_a = st.splitter.flush()
        return reasoning + rest_r, answer + rest_a

    # -- streams ----------------------------------------------------------------------------
    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """One stream chunk annotated, or None when nothing of it is left to send."""
        if not self.head:
            self.head = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        if "prompt_token_ids" in chunk:
            if self.p.endpoint == "chat":
                self.prompt = chunk["prompt_token_ids"]
            if not self.p.wants_token_ids:
                chunk.pop("prompt_token_ids")
        kept = []
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            st = self._choice(index, choice.get("prompt_token_ids"))
            if st.done:
                continue  # cut by a stop string: vLLM's later tokens are not shown
            ids = list(choice.get("token_ids") or [])
            if not self.p.wants_token_ids:
                choice.pop("token_ids", None)
                choice.pop("prompt_token_ids", None)
            self._feed(st, ids)
            if self._choice_chunk(choice, st, ids):
                kept.append(choice)
        if "choices" in chunk:
            if not kept and chunk["choices"] and chunk.get("usage") is None:
                return None
            chunk["choices"] = kept
        self._usage(chunk.get("usage"))
        return chunk

    def plain_event(self, data: bytes) -> bytes | None:
        """A plain middle chunk of a `lean` stream, annotated without parsing it (b"": nothing to send);
        None for any other.

        Plain is what vLLM's chat route writes for one choice between its first and its finishing
        chunk: `..."choices":[{"index":0,"delta":{"reasoning"|"content":"TEXT"},"logprobs":null,
        "finish_reason":null,"token_ids":[IDS]}]}` (vLLM <= 0.32 also writes the reasoning as
        `reasoning_content`). The ids are counted and dropped and a reasoning text is copied to
        `reasoning_content`, as `chunk` does; every other chunk (the first, the finishing one, usage,
        logprobs, a delta of other or several fields, an empty one) goes to `chunk`. The API server
        is the bottleneck of a loaded GPU server and these are most of its chunks: the bytes path
        costs a fraction of a parse and a re-serialisation (benchmarks/layer_cost.py).

        Example (shortened):
            ``{"choices":[{"index":0,"delta":{"reasoning":" so"},"logprobs":null,"finish_reason":null,"token_ids":[42]}]}``
            becomes ``{"choices":[{"index":0,"delta":{"reasoning":" so","reasoning_content":" so"},"logprobs":null,
            "finish_reason":null}]}``, and token 42 is counted.
        """
        if not data.endswith(b"]}]}"):
            return None
        tail = data.rfind(_PLAIN_TAIL)
        d = data.find(_PLAIN_DELTA)
        if tail < 0 or d < 0 or d > tail:
            return None
        raw_ids = data[tail + len(_PLAIN_TAIL) : -4]
        if not raw_ids.replace(b",", b"").isdigit():
            return None
        delta = data[d + len(_PLAIN_DELTA) : tail]
        if delta.startswith(_REASONING) and delta.endswith(b'"}'):
            text = delta[len(_REASONING) : -2]
            if _REASONING_CONTENT in text:  # vLLM <= 0.32 writes both names itself: the same text twice
                half = (len(text) - len(_REASONING_CONTENT)) // 2
                if text != text[:half] + _REASONING_CONTENT + text[:half]:
                    return None
                text = text[:half]
            delta = _REASONING + text + _REASONING_CONTENT + text + b'"}'
        elif delta.startswith(_CONTENT) and delta.endswith(b'"}') and len(delta) > len(_CONTENT) + 2:
            text = delta[len(_CONTENT) : -2]
        elif delta == b"{}":  # tokens whose text the detokenizer holds back (a character split over several)
            text = None
        else:
            return None
        # a quote in TEXT not escaped would end the string there: a delta of several fields
        if text is not None and text.count(b'"') != text.count(b'\\"'):
            return None
        st = self.choices.get(0)
        if st is None or st.done:
            return None
        self._feed(st, [int(raw_ids)] if b"," not in raw_ids else [int(t) for t in raw_ids.split(b",")])
        if text is None:
            return b""  # nothing left to send once the ids are gone (as `chunk` drops it)
        return data[: d + len(_PLAIN_DELTA)] + delta + _PLAIN_END

    def _choice_chunk(self, choice: dict[str, Any], st: _Choice, ids: list[int]) -> bool:
        """Annotate one choice of a chunk in place; False when it carries nothing any more."""
        chat = self.p.endpoint == "chat"
        holder = choice.get("delta") if chat else choice
        if not isinstance(holder, dict):
            return True
        key = "content" if chat else "text"
        finishing = choice.get("finish_reason") is not None
        if st.splitter is not None:
            reasoning, answer = st.splitter.push(ids)
            if finishing:
                rest_r, rest_a = st.splitter.flush()
                reasoning, answer = reasoning + rest_r, answer + rest_a
            if chat:
                holder.pop("content", None)
                if answer or "role" in holder:
                    holder["content"] = answer
            else:
                holder["text"] = answer
            holder.pop("reasoning", None)
            self._reasoning(holder, reasoning or None)
        else:
            self._reasoning(holder, holder.get("reasoning"))
        if self.p.hide_reasoning and chat:
            choice["logprobs"] = None
        text = holder.get(key)
        if st.cutter is not None and isinstance(text, str) and (text or finishing):
            out, cut = st.cutter.push(text)
            if cut:
                holder[key] = out + self._kept_stop(st)
                choice["finish_reason"] = "stop"
                choice["stop_reason"] = st.cutter.matched
                finishing = True
            else:
                holder[key] = out + (st.cutter.flush() if finishing else "")
        if self.p.vote and isinstance(holder.get(key), str):
            st.answer.append(holder[key])
        if finishing:
            choice["budget"] = self._finish(st)
            return True
        if chat and holder.get(key) == "" and "role" not in holder:
            holder.pop(key)
        if chat:
            carries = any(v is not None for v in holder.values())
        else:
            carries = bool(holder.get("text") or holder.get("reasoning"))
        return carries or choice.get("logprobs") is not None or "token_ids" in choice

    def closing_chunks(self) -> list[dict[str, Any]]:
        """What ends a stream that the layer cut short (every choice stopped): the usage chunk, if asked for."""
        if not self.p.include_usage:
            return []
        if self.p.endpoint == "chat":
            prompts = [len(self.prompt or [])]
        else:  # one prompt per `n` choices
            prompts = [st.prompt_len for i, st in self.choices.items() if i % self.p.n == 0]
        prompt_tokens = sum(prompts)
        completion = sum(st.tokens for st in self.choices.values())
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion, "completion_tokens": completion}
        self._usage(usage)
        return [{**self.head, "choices": [], "usage": usage}]
