"""Incremental detokenisation: token ids in, text deltas out, never re-tokenising."""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream

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
