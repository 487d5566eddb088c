"""Incremental detokenisation: token ids in, text deltas out, never re-tokenising."""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream


class IncrementalDecoder:
    """Turns ids into text deltas one id at a time, holding back incomplete characters.

    Backed by the `tokenizers` library's `DecodeStream` (Rust, a few µs per id), so the text
    never depends on how a stream was chunked. A character still incomplete when the stream
    ends is dropped, as vLLM's own detokeniser does.

    Example:
        >>> dec = IncrementalDecoder(tok)   # doctest: +SKIP
        >>> dec.push([1234]) + dec.push([5678]) == tok.decode([1234, 5678], skip_special_tokens=True)   # doctest: +SKIP
        True
    """

    __slots__ = ("_backend", "_stream")

    def __init__(self, tokenizer: Any) -> None:
        self._backend = tokenizer.backend_tokenizer  # a "fast" tokenizer's Rust core
        self._stream = DecodeStream(skip_special_tokens=True)

    def push(self, ids: list[int]) -> str:
        step, backend = self._stream.step, self._backend
        return "".join(filter(None, (step(backend, i) for i in ids)))
