"""Incremental detokenisation: token ids in, text deltas out, never re-tokenising."""

from __future__ import annotations

from typing import Any


class IncrementalDecoder:
    """Turns a growing list of ids into text deltas, holding back incomplete characters.

    Each id is decoded with the previous chunk as context, so tokenizers that merge bytes or
    spaces across ids emit whole characters; ids are taken one at a time, so the text does
    not depend on how a stream was chunked.

    Example:
        >>> dec = IncrementalDecoder(tok)   # doctest: +SKIP
        >>> dec.push([1234]) + dec.push([5678]) + dec.flush() == tok.decode([1234, 5678])   # doctest: +SKIP
        True
    """

    __slots__ = ("_tok", "_ids", "_prefix", "_read")

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # ids already turned into text

    def push(self, ids: list[int]) -> str:
        parts = []
        for token in ids:
            self._ids.append(token)
            parts.append(self._step(final=False))
        return "".join(parts)

    def flush(self) -> str:
        """Whatever is held back, incomplete characters included (at the end of a stream)."""
        return self._step(final=True)

    def _step(self, final: bool) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""  # wait for the rest of a multi-byte character
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True) if ids else ""
