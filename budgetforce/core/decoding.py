"""Incremental detokenisation: token ids in, text deltas out, never re-tokenising; and the split
of a choice's ids into its reasoning and its answer text."""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream

from budgetforce.core.controller import Phase, ThinkingController

CONTEXT_IDS = 8  # prompt ids read before a text: enough for the decoder's leading-space rules


class IncrementalDecoder:
    """Turns ids into text deltas one id at a time, holding back incomplete characters.

    Backed by the `tokenizers` library's `DecodeStream` (Rust, a few µs per id), so the text
    never depends on how a stream was chunked. `flush()` gives up a character still incomplete
    when a text ends, as U+FFFD, the way `tokenizer.decode` of the same ids does.

    Example:
        >>> dec = IncrementalDecoder(tok)   # doctest: +SKIP
        >>> dec.push([1234]) + dec.push([5678]) == tok.decode([1234, 5678], skip_special_tokens=True)   # doctest: +SKIP
        True
    """

    __slots__ = ("_backend", "_stream", "_held", "_skip")

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True, context: list[int] | None = None) -> None:
        """``context``: ids before the text (a prompt), read but not shown, as vLLM's detokenizer reads
        the prompt's tail, so the first ids decode as they do after it (a leading space kept)."""
        self._backend = tokenizer.backend_tokenizer  # a "fast" tokenizer's Rust core
        self._skip = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._held: list[int] = []  # ids the stream has not turned into text yet
        for i in (context or [])[-CONTEXT_IDS:]:
            self._stream.step(self._backend, i)

    def push(self, ids: list[int]) -> str:
        parts = []
        for i in ids:
            text = self._stream.step(self._backend, i)
            if text is None:
                self._held.append(i)
            else:
                self._held.clear()
                parts.append(text)
        return "".join(parts)

    def flush(self) -> str:
        """The held-back ids as text (an incomplete character becomes U+FFFD)."""
        text = self._backend.decode(self._held, skip_special_tokens=self._skip) if self._held else ""
        self._held.clear()
        self._stream = DecodeStream(skip_special_tokens=self._skip)
        return text


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
        self.ids: list[int] = []  # everything pushed so far

    def push(self, ids: list[int]) -> tuple[str, str]:
        self.ids.extend(ids)
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
