"""The middleware's JSON codec: msgspec for speed, `json`'s answers where msgspec refuses."""

from __future__ import annotations

import json

import pytest

from budgetforce.server.middleware import _decode, _encode


def test_chunks_round_trip_as_json_would_write_them() -> None:
    chunk = {"id": "c1", "choices": [{"delta": {"reasoning": "Wait, 2·π ≈ 6.28 — 日本"}, "index": 0}], "usage": None}
    out = _encode(chunk)
    assert out == json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode()
    assert _decode(out) == chunk


def test_what_msgspec_refuses_falls_back_to_json() -> None:
    assert _decode(b'{"logprob": -Infinity}') == {"logprob": float("-inf")}  # vLLM never writes it; a proxy might
    assert _encode({"logprob": float("-inf")}) == b'{"logprob":null}'  # written as vLLM's pydantic writes it
    big = {"seed": 2**70}  # beyond 64 bits: msgspec overflows, json does not
    assert _decode(_encode(big)) == big


def test_what_is_no_json_stays_a_value_error() -> None:
    with pytest.raises(ValueError):
        _decode(b"data: not json")
