"""What the budget layer costs the API server per streamed chunk, in-process, without an engine.

On a GPU the API server is the bottleneck at high concurrency (about 10k tok/s over HTTP against
41k in the engine on the H200, issue 20): every microsecond it spends per chunk is throughput. This
drives `BudgetMiddleware` (the real one, with the served model's real tokenizer and profile) with the
exact SSE stream vLLM's chat route writes for a budgeted request (`return_token_ids`, a reasoning
parser: one token per chunk, `delta.reasoning`, then `delta.content`, the finish and usage chunks),
and the same stream for a request without a budget, which the layer passes through untouched.
It prints the CPU microseconds per chunk of each, interleaved (A B A B ...), medians; the budgeted
streams twice, with the bytes path for plain chunks (`Annotator.plain_event`) and with every chunk
parsed, as the layer did before that path.

    python -m benchmarks.layer_cost --tokenizer ../shared/fixtures/deepseek-r1-distill-qwen

The upstream app stands in for vLLM's route only to write its bytes; everything the layer does to
them (parse, count the thinking on the ids, annotate, serialise) is the product's own code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from budgetforce.core.budget import BudgetDefaults
from budgetforce.server.annotate import Annotator
from budgetforce.server.middleware import BudgetMiddleware
from budgetforce.server.rewrite import ServedModel


def served(tokenizer_dir: str) -> ServedModel:
    """The served model as the layer loads it (`served_model`), for a deepseek_r1-parsed chat server."""
    from transformers import AutoTokenizer

    from budgetforce.core.profile import detect_profile
    from budgetforce.server.middleware import _fields

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    profile = detect_profile(tokenizer, tokenizer_dir).resolve(tokenizer)
    return ServedModel(
        profile=profile, tokenizer=tokenizer, max_model_len=4096,
        chat_fields=_fields("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
        completion_fields=_fields("vllm.entrypoints.openai.completion.protocol", "CompletionRequest"),
        reasoning_parser=True, child_safe=True,
    )  # fmt: skip


def vllm_stream(model: ServedModel, thinking: int, answer: int, token_ids: bool) -> list[bytes]:
    """The SSE events vLLM 0.32's chat route writes for one choice (one token per chunk)."""
    tok = model.tokenizer
    close = model.profile.think_end[-1]
    word = tok.encode(" step", add_special_tokens=False)[0]
    head = {"id": "chatcmpl-8bbc7986b8f54316", "object": "chat.completion.chunk", "created": 1796357612, "model": "m"}
    prompt = list(range(1000, 1128))

    def chunk(delta: dict[str, Any], ids: list[int] | None, finish: str | None = None, **extra: Any) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if token_ids:
            choice["token_ids"] = ids
        body = {**head, "choices": [choice], **extra}
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    first = {"prompt_token_ids": prompt} if token_ids else {}
    events = [chunk({"role": "assistant", "content": ""}, None, **first)]
    events += [chunk({"reasoning": " step", "reasoning_content": " step"}, [word]) for _ in range(thinking)]  # both names
    events.append(chunk({"content": ""}, [close]))
    events += [chunk({"content": " step"}, [word]) for _ in range(answer - 1)]
    events.append(chunk({"content": ""}, [tok.eos_token_id], finish="length"))
    usage = {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + thinking + answer + 1,
             "completion_tokens": thinking + answer + 1}  # fmt: skip
    events.append(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def upstream(events: list[bytes]) -> Any:
    """An ASGI app that writes `events` as a streamed 200, as vLLM's StreamingResponse does (one send each)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the (rewritten) request body
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for e in events:
            await send({"type": "http.response.body", "body": e, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def one_request(layer: BudgetMiddleware, body: dict[str, Any]) -> int:
    raw = json.dumps(body).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]}  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client stays
        return {"type": "http.disconnect"}

    out = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal out
        out += len(message.get("body", b""))

    await layer(scope, receive, send)
    return out


def measure(model: ServedModel, body: dict[str, Any], events: list[bytes], requests: int, parsed: bool = False) -> float:
    """CPU µs per chunk (process time, so another process on the machine does not count).

    ``parsed``: every chunk goes through `Annotator.chunk` (the bytes path for plain chunks is off),
    which is what the layer did before that path existed."""
    layer = BudgetMiddleware(upstream(events), BudgetDefaults(), model)
    layer._auth = None  # no key on this server

    async def run() -> None:
        for _ in range(requests):
            await one_request(layer, body)

    saved = Annotator.plain_event
    if parsed:
        Annotator.plain_event = lambda self, data: None  # type: ignore[method-assign]
    try:
        t = time.process_time()
        asyncio.run(run())
        return (time.process_time() - t) / (requests * len(events)) * 1e6
    finally:
        Annotator.plain_event = saved  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True, help="the served model's tokenizer folder")
    ap.add_argument("--thinking", type=int, default=900)
    ap.add_argument("--answer", type=int, default=120)
    ap.add_argument("--requests", type=int, default=20, help="requests per measurement")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="write the medians here")
    args = ap.parse_args()
    model = served(args.tokenizer)
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_completion_tokens": args.thinking + args.answer + 1}  # fmt: skip
    budgeted = vllm_stream(model, args.thinking, args.answer, token_ids=True)
    maximum = {**base, "max_thinking_tokens": args.thinking}
    both = {**base, "min_thinking_tokens": args.thinking // 2, "max_thinking_tokens": args.thinking}
    configs = {  # name: (request, vLLM's events, every chunk parsed)
        "no budget (passed through)": (base, vllm_stream(model, args.thinking, args.answer, token_ids=False), False),
        "max_thinking_tokens": (maximum, budgeted, False),
        "min + max": (both, budgeted, False),
        "max, every chunk parsed": (maximum, budgeted, True),
        "min + max, every chunk parsed": (both, budgeted, True),
    }
    samples: dict[str, list[float]] = {k: [] for k in configs}
    for name, (body, events, parsed) in configs.items():  # warm-up: imports, the tokenizer's caches
        measure(model, body, events, 2, parsed)
    for _ in range(args.reps):
        for name, (body, events, parsed) in configs.items():
            samples[name].append(measure(model, body, events, args.requests, parsed))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    base_us = medians["no budget (passed through)"]
    print(f"{'config':<30} {'µs/chunk':>9} {'vs pass-through':>16}")
    for k, v in medians.items():
        print(f"{k:<30} {v:9.2f} {v - base_us:+15.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"us_per_chunk": medians, "samples": samples, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
