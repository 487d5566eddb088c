"""The budget layer's bytes path for plain stream chunks (`Annotator.plain_event`): the same stream,
byte for byte in meaning, as the parsing path, and only for the chunks it can read exactly.

The live server's stream (real vLLM chunks through the bytes path) is in test_server.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from budgetforce.core.budget import BudgetDefaults
from budgetforce.server.annotate import Annotator
from budgetforce.server.middleware import BudgetMiddleware
from budgetforce.server.rewrite import ServedModel, prepare

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1796357612, "model": "m"}
# texts a reasoning parser can hand over: quotes, backslashes (one right before the closing quote),
# control characters, non-ASCII, and text that looks like the chunk's own structure
TEXTS = ["", " so", ' "quoted"', " back\\slash", " ends\\", "\ttab\nline", " 日本 ≈ π", '","content":"x', "\u2028", "\\\""]


@pytest.fixture(scope="module")
def model() -> ServedModel:
    from transformers import AutoTokenizer

    from budgetforce.core.profile import detect_profile
    from budgetforce.student import STUDENT_PATH

    tok = AutoTokenizer.from_pretrained(STUDENT_PATH)
    fields = frozenset({"messages", "model", "max_completion_tokens", "stream", "stream_options", "vllm_xargs",
                        "return_token_ids", "include_reasoning", "seed", "logprobs", "n", "stop"})  # fmt: skip
    return ServedModel(profile=detect_profile(tok).resolve(tok), tokenizer=tok, max_model_len=1024,
                       chat_fields=fields, completion_fields=fields, reasoning_parser=True, child_safe=True)  # fmt: skip


def chunk(delta: dict[str, Any] | None, ids: list[int] | None, finish: str | None = None, **extra: Any) -> bytes:
    """One SSE event as vLLM's chat route writes it (`model_dump_json`: compact, non-ASCII as is)."""
    choices = []
    if delta is not None:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": extra.pop("logprobs", None),
                                  "finish_reason": finish}  # fmt: skip
        if ids is not None:
            choice["token_ids"] = ids
        choices.append(choice)
    body = {**HEAD, "choices": choices, **extra}
    return b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def vllm_stream(model: ServedModel) -> tuple[list[bytes], int]:
    """A budgeted stream: role, thinking, close, answer, finish, usage, [DONE]; and how many of its
    chunks are plain."""
    word = model.tokenizer.encode(" a", add_special_tokens=False)[0]
    close = model.profile.think_end[-1]
    prompt = [1, 2, 3, *model.profile.think_start]  # the chat template opens the thinking
    events = [chunk({"role": "assistant", "content": ""}, None, prompt_token_ids=prompt)]
    plain = 0
    for text in TEXTS:
        events.append(chunk({"reasoning": text}, [word]))
        events.append(chunk({"reasoning": text}, [word, word]))  # several tokens in one chunk
        plain += 2
    for text in TEXTS[:3]:  # vLLM <= 0.32 writes the reasoning under both names
        events.append(chunk({"reasoning": text, "reasoning_content": text}, [word]))
        plain += 1
    events.append(chunk({}, [word]))  # a token whose text the detokenizer holds back: counted, not sent
    plain += 1
    events.append(chunk({"reasoning": "x", "content": "y"}, [word]))  # a delta of two fields: parsed
    events.append(chunk({"content": ""}, [close]))  # an empty delta: parsed (and dropped)
    for text in TEXTS[1:]:  # an empty content is no plain chunk (see below)
        events.append(chunk({"content": text}, [word]))
        plain += 1
    events.append(chunk({"content": " z"}, [word], logprobs={"content": []}))  # logprobs: parsed
    events.append(chunk({"content": ""}, [model.tokenizer.eos_token_id], finish="length"))
    events.append(chunk(None, None, usage={"prompt_tokens": 3, "completion_tokens": 40, "total_tokens": 43}))
    events.append(b"data: [DONE]\n\n")
    return events, plain


def serve(model: ServedModel, body: dict[str, Any], events: list[bytes]) -> list[Any]:
    """The client's side of one request through the real middleware over an upstream writing ``events``."""

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})  # fmt: skip
        for e in events:
            await send({"type": "http.response.body", "body": e, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    layer = BudgetMiddleware(upstream, BudgetDefaults(), model)
    layer._auth = None
    raw = json.dumps(body).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "",
             "headers": [(b"content-type", b"application/json")]}  # fmt: skip
    out: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        out.append(message.get("body", b""))

    asyncio.run(layer(scope, receive, send))
    text = b"".join(out).decode()
    assert text.endswith("\n\n")
    return [e[len("data: ") :] if e.endswith("[DONE]") else json.loads(e[len("data: ") :]) for e in text.split("\n\n")[:-1]]


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}, "max_completion_tokens": 64, "min_thinking_tokens": 4,
        "max_thinking_tokens": 40}  # fmt: skip


def test_the_bytes_path_writes_what_parsing_writes(model: ServedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    events, plain = vllm_stream(model)
    read = Annotator.plain_event
    taken: list[bool] = []

    def counted(self: Annotator, data: bytes) -> bytes | None:
        out = read(self, data)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(Annotator, "plain_event", counted)
    fast = serve(model, BODY, events)
    assert sum(taken) == plain  # every plain chunk took the bytes path, no other did
    monkeypatch.setattr(Annotator, "plain_event", lambda self, data: None)
    slow = serve(model, BODY, events)
    assert fast == slow
    deltas = [c["choices"][0]["delta"] for c in fast if isinstance(c, dict) and c.get("choices")]
    assert [d["reasoning_content"] for d in deltas if "reasoning_content" in d and d["reasoning"] != "x"] == \
        [t for t in TEXTS for _ in range(2)] + TEXTS[:3]  # fmt: skip
    assert not any("token_ids" in c for ch in fast if isinstance(ch, dict) for c in ch.get("choices", []))
    final = next(c for ch in fast if isinstance(ch, dict) for c in ch.get("choices", []) if c["finish_reason"])
    thinking = 3 * len(TEXTS) + 3 + 2  # 1 and 2 ids a text, 3 of both names, the empty and the two-field delta
    assert final["budget"]["thinking_tokens"] == thinking
    assert fast[-2]["usage"]["completion_tokens_details"]["reasoning_tokens"] == thinking


@pytest.mark.parametrize(
    "extra",
    [{"return_token_ids": True}, {"stop": ["zz"]}, {"include_reasoning": False}, {"n": 2, "seed": 1}],
    ids=["token-ids", "stop", "hidden", "n2"],
)
def test_requests_that_need_each_chunk_parsed_never_take_it(model: ServedModel, extra: dict[str, Any]) -> None:
    prepared = prepare({**BODY, **extra}, "chat", model, BudgetDefaults())
    assert prepared is not None and not Annotator(prepared, model).lean


def test_what_is_not_plain_is_refused(model: ServedModel) -> None:
    prepared = prepare(dict(BODY), "chat", model, BudgetDefaults())
    annotator = Annotator(prepared, model)
    assert annotator.lean
    plain = chunk({"reasoning": " so"}, [5])[6:-2]
    assert annotator.plain_event(plain) is None  # no choice seen yet: the first chunk is always parsed
    annotator.chunk(json.loads(chunk({"role": "assistant", "content": ""}, None)[6:-2]))
    assert annotator.plain_event(plain) is not None
    for data in [
        chunk({"reasoning": "a\\", "content": "b"}, [5]),  # two fields, the first text ending in a backslash
        chunk({"reasoning": "a", "reasoning_content": "b"}, [5]),  # two names, two texts
        chunk({"content": ""}, [5]),
        chunk({"reasoning": " so"}, [5], finish="stop"),
        chunk({"reasoning": " so"}, [5], logprobs={"content": []}),
        chunk({"reasoning": " so"}, []),
        chunk({"reasoning": " so"}, [5], usage={"prompt_tokens": 1}),
        chunk({"tool_calls": []}, [5]),
    ]:
        assert annotator.plain_event(data[6:-2]) is None, data
