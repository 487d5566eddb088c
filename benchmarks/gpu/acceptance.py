"""Acceptance of a running budgetforce server as a user meets it: every budget through the openai SDK.

Each target is an OpenAI-compatible server with budgetforce's processor and budget layer
(`budgetforce serve`, or a stock `vllm serve --logits-processors … --middleware …`). For every
case the script sends the budgeted request (full and streamed), counts the budget itself on the
returned token ids, and compares with what the server reported. Greedy cases are also compared
token for token with s1's loop run over HTTP on the same server with no budget fields (plain
completions from token ids, stopped at each close attempt and continued with the wait string,
or with the close and answer prefix at the maximum, exactly as `simplescaling/s1`'s README loop).

    python benchmarks/gpu/acceptance.py --target bf-serve http://127.0.0.1:8001 MODEL TOKENIZER_DIR \\
        --out acceptance.json

Writes one JSON of named checks (pass/fail and details per target) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from openai import BadRequestError, OpenAI
from transformers import AutoTokenizer

QUESTION = [{"role": "user", "content": "Tom has 12 apples and buys 3 bags of 7. How many apples does he have now?"}]
WAIT = "Wait"
PREFIX = "\n\nFinal Answer:"


@dataclass
class Target:
    name: str
    url: str
    model: str
    tokenizer: Any
    client: OpenAI = field(init=False)
    close: int = field(init=False)
    eos: int = field(init=False)

    def __post_init__(self) -> None:
        self.client = OpenAI(base_url=f"{self.url}/v1", api_key="unused", timeout=300, max_retries=0)
        self.close = self.tokenizer.convert_tokens_to_ids("</think>")
        self.eos = self.tokenizer.eos_token_id

    def enc(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


# -- the requests ---------------------------------------------------------------------------
def chat(t: Target, budget: dict[str, Any], cap: int, stream: bool = False, **kw: Any) -> dict[str, Any]:
    """One chat completion with a budget: {ids, prompt, reasoning, content, budget, finish} per choice."""
    body = {**budget, "return_token_ids": True, **kw.pop("extra", {})}
    args = dict(model=t.model, messages=QUESTION, max_completion_tokens=cap, extra_body=body, **kw)
    if not stream:
        r = t.client.chat.completions.create(**args).model_dump()
        out = []
        for c in r["choices"]:
            msg = c["message"]
            out.append({"ids": c.get("token_ids") or [], "reasoning": msg.get("reasoning_content") or msg.get("reasoning") or "",
                        "content": msg.get("content") or "", "budget": c.get("budget"), "finish": c["finish_reason"]})  # fmt: skip
        return {"prompt": r.get("prompt_token_ids") or [], "choices": out}
    chunks = t.client.chat.completions.create(**args, stream=True)
    prompt: list[int] = []
    acc: dict[int, dict[str, Any]] = {}
    for ch in chunks:
        d = ch.model_dump()
        prompt = d.get("prompt_token_ids") or prompt
        for c in d.get("choices") or []:
            a = acc.setdefault(c["index"], {"ids": [], "reasoning": "", "content": "", "budget": None, "finish": None})
            a["ids"] += c.get("token_ids") or []
            delta = c.get("delta") or {}
            a["reasoning"] += delta.get("reasoning_content") or delta.get("reasoning") or ""
            a["content"] += delta.get("content") or ""
            if c.get("budget") is not None:
                a["budget"] = c["budget"]
            if c.get("finish_reason"):
                a["finish"] = c["finish_reason"]
    return {"prompt": prompt, "choices": [acc[i] for i in sorted(acc)]}


def complete(t: Target, prompt: list[int], max_tokens: int, stop_ids: list[int], min_tokens: int = 0,
             **kw: Any) -> tuple[list[int], int | None]:
    """A plain completion from token ids, no budget fields: (new ids without the stop id, the stop id or None)."""
    body = {"return_token_ids": True, "skip_special_tokens": False, "stop_token_ids": stop_ids, "min_tokens": min_tokens,
            **kw.pop("extra", {})}  # fmt: skip
    r = t.client.completions.create(model=t.model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                    extra_body=body, **kw).model_dump()  # fmt: skip
    c = r["choices"][0]
    ids = list(c.get("token_ids") or [])
    stop = c.get("stop_reason") if c["finish_reason"] == "stop" else None
    if c["finish_reason"] == "stop" and stop is None and ids and ids[-1] in stop_ids:
        stop = ids[-1]
    if stop is not None and ids and ids[-1] == stop:
        ids = ids[:-1]
    return ids, stop


def s1_loop(t: Target, prompt: list[int], cap: int, min_t: int = 0, max_t: int | None = None,
            max_waits: int | None = None, waits: tuple[str, ...] = (WAIT,), prefix: str = PREFIX,
            ignore_eos: bool = False, extra: dict[str, Any] | None = None) -> tuple[list[int], int]:
    """s1's budget forcing as rounds of plain requests: the completion ids and the waits inserted."""
    extra = dict(extra or {})
    wait_ids = [t.enc(w) for w in waits]
    out: list[int] = []
    thinking = n_waits = 0
    after_wait = False
    while True:
        room = cap - len(out)
        think_room = room if max_t is None else min(room, max_t - thinking)
        stop = None
        if think_room > 0:
            ids, stop = complete(t, prompt + out, think_room, [t.close, t.eos], 1 if after_wait else 0, extra=extra)
            out += ids
            thinking += len(ids)
            after_wait = False
        if stop is not None:  # a close attempt (the close, or an end of sequence inside the thinking)
            if thinking < min_t and (max_waits is None or n_waits < max_waits):
                w = wait_ids[n_waits % len(wait_ids)]
                take = w if max_t is None else w[: max_t - thinking]
                out += take
                thinking += len(take)
                n_waits += 1
                after_wait = len(take) == len(w)
                if max_t is not None and thinking >= max_t:
                    out += [t.close, *t.enc(prefix)]
                    break
                continue
            out.append(t.close)
            break
        if max_t is not None and thinking >= max_t and len(out) < cap:
            out += [t.close, *t.enc(prefix)]
            break
        return out[:cap], n_waits  # the cap ended the thinking
    room = cap - len(out)
    if room > 0:
        ids, stop = complete(t, prompt + out, room, [], 0, extra={**extra, "ignore_eos": ignore_eos})
        out += ids + ([stop] if stop is not None else [])
    return out[:cap], n_waits


# -- counting on the ids ----------------------------------------------------------------------
def count(t: Target, ids: list[int], waits: tuple[str, ...] = (WAIT,)) -> dict[str, Any]:
    """The thinking as the ids show it: tokens before the close, and occurrences of the wait strings."""
    end = ids.index(t.close) if t.close in ids else len(ids)
    think = ids[:end]
    found = 0
    for w in {tuple(t.enc(s)) for s in waits}:
        found += sum(1 for i in range(len(think) - len(w) + 1) if tuple(think[i : i + len(w)]) == w)
    return {"thinking_tokens": end, "wait_occurrences": found, "closed": end < len(ids)}


class Checks:
    def __init__(self, only: list[str] | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.only = only or []  # run only the checks whose name holds one of these texts

    def run(self, target: str, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if self.only and not any(o in name for o in self.only):
            return
        t0 = time.time()
        try:
            details = fn()
            ok = all(v for k, v in details.items() if k.startswith("ok_"))
        except Exception as e:  # noqa: BLE001 - a check that raises fails, the run goes on
            details, ok = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}, False
        self.rows.append({"target": target, "check": name, "pass": ok, "seconds": round(time.time() - t0, 2), **details})
        print(f"{'PASS' if ok else 'FAIL'}  {target:12s} {name:34s} {json.dumps({k: v for k, v in details.items() if k != 'trace'}, default=str)[:300]}", flush=True)  # noqa: E501


def agree(report: dict[str, Any] | None, counted: dict[str, Any], waits: int | None = None) -> dict[str, Any]:
    """The server's budget report against the count on the ids."""
    report = report or {}
    out = {"reported": report, "counted": counted}
    out["ok_thinking_tokens"] = report.get("thinking_tokens") == counted["thinking_tokens"]
    out["ok_enforced"] = report.get("enforced") is not False
    if waits is not None:
        out["ok_waits_inserted"] = report.get("waits_inserted") == waits
    return out


def cases(t: Target, checks: Checks, greedy_reference: bool) -> None:
    close_bias = {"logit_bias": {str(t.close): 7}}  # the model tries to close often: minimums insert waits
    no_close = {"logit_bias": {str(t.close): -100}}  # the model never closes: only a forced close ends the thinking
    wait_ids = t.enc(WAIT)

    def maxonly(stream: bool) -> dict[str, Any]:
        r = chat(t, {"max_thinking_tokens": 50, "answer_prefix": PREFIX}, 120, stream, temperature=0,
                 extra={"ignore_eos": True, **no_close})  # fmt: skip
        c = r["choices"][0]
        got = count(t, c["ids"])
        d = agree(c["budget"], got, waits=0)
        d["ok_close_at_50"] = got["thinking_tokens"] == 50 and c["ids"][50:51] == [t.close]
        d["ok_prefix_follows"] = c["ids"][51 : 51 + len(t.enc(PREFIX))] == t.enc(PREFIX)
        d["ok_forced_end"] = c["budget"]["forced_end"] is True
        d["ok_answer_nonempty"] = len(c["content"]) > 0
        if greedy_reference:
            ref, n = s1_loop(t, r["prompt"], 120, max_t=50, ignore_eos=True, extra=no_close)
            d["ok_equals_s1_loop"] = ref == c["ids"]
            d["first_divergence"] = next((i for i, (a, b) in enumerate(zip(ref, c["ids"])) if a != b), None)
        return d

    checks.run(t.name, "max 50 (greedy)", lambda: maxonly(False))
    checks.run(t.name, "max 50 (greedy, streamed)", lambda: maxonly(True))

    def minmax(stream: bool, min_t: int, max_t: int, max_waits: int | None) -> dict[str, Any]:
        budget = {"min_thinking_tokens": min_t, "max_thinking_tokens": max_t, "wait_strings": [WAIT], "answer_prefix": PREFIX}
        if max_waits is not None:
            budget["max_waits"] = max_waits
        cap = max_t + 40
        r = chat(t, budget, cap, stream, temperature=0, extra=close_bias)
        c = r["choices"][0]
        got = count(t, c["ids"])
        d = agree(c["budget"], got, waits=got["wait_occurrences"])
        waits_used = c["budget"].get("waits_inserted") or 0
        exhausted = max_waits is not None and waits_used >= max_waits
        d["ok_minimum"] = got["thinking_tokens"] >= min_t or exhausted
        d["ok_maximum"] = got["thinking_tokens"] <= max_t
        if max_waits is not None:
            d["ok_max_waits"] = waits_used == max_waits
        if greedy_reference:
            ref, n = s1_loop(t, r["prompt"], cap, min_t, max_t, max_waits, extra=close_bias)
            d["ok_equals_s1_loop"] = ref == c["ids"]
            d["ok_waits_equal_s1_loop"] = n == c["budget"].get("waits_inserted")
            d["first_divergence"] = next((i for i, (a, b) in enumerate(zip(ref, c["ids"])) if a != b), None)
        return d

    checks.run(t.name, "min 120 max 200 (greedy)", lambda: minmax(False, 120, 200, None))
    checks.run(t.name, "min 120 max 200 (greedy, streamed)", lambda: minmax(True, 120, 200, None))
    checks.run(t.name, "min 600 max 900 max_waits 3", lambda: minmax(False, 600, 900, 3))

    def sampled() -> dict[str, Any]:
        budget = {"min_thinking_tokens": 100, "max_thinking_tokens": 200, "answer_prefix": PREFIX}
        a = chat(t, budget, 260, temperature=1.0, seed=7, extra=close_bias)["choices"][0]
        b = chat(t, budget, 260, True, temperature=1.0, seed=7, extra=close_bias)["choices"][0]
        got = count(t, a["ids"])
        d = agree(a["budget"], got, waits=got["wait_occurrences"])
        d["ok_seeded_stream_equals_full"] = a["ids"] == b["ids"] and a["budget"] == b["budget"]
        d["ok_within_budget"] = 100 <= got["thinking_tokens"] <= 200 or (got["thinking_tokens"] <= 200 and not got["closed"])
        return d

    checks.run(t.name, "sampled seeded min 100 max 200", sampled)

    def n3() -> dict[str, Any]:
        try:
            r = chat(t, {"min_thinking_tokens": 40, "max_thinking_tokens": 80}, 120, n=3, temperature=1.0, seed=11,
                     extra=close_bias)  # fmt: skip
        except BadRequestError as e:  # runner V2: n > 1 budgets are refused, naming `n` (README)
            err = e.body.get("error", e.body) if isinstance(e.body, dict) else {}
            return {"refused": str(e)[:300], "ok_refused_naming_n": e.status_code == 400 and err.get("param") == "n"}
        d: dict[str, Any] = {"choices": []}
        ok = len(r["choices"]) == 3
        for c in r["choices"]:
            got = count(t, c["ids"])
            rep = c["budget"] or {}
            d["choices"].append({"reported": rep, "counted": got})
            ok &= rep.get("thinking_tokens") == got["thinking_tokens"] and got["thinking_tokens"] <= 80
            ok &= got["thinking_tokens"] >= 40 and rep.get("enforced") is not False
            ok &= rep.get("waits_inserted") is None  # n > 1: one stats row per request (README)
        d["ok_each_choice"] = ok
        d["ok_choices_differ"] = len({tuple(c["ids"]) for c in r["choices"]}) == 3
        return d

    checks.run(t.name, "n=3 seeded min 40 max 80", n3)

    def stops() -> dict[str, Any]:
        budget = {"min_thinking_tokens": 60, "max_thinking_tokens": 100, "wait_strings": [WAIT], "answer_prefix": PREFIX}
        stop = [WAIT, "Answer", "</think>"]  # the last one: a dummy model repeats the close in its answer
        plain = chat(t, budget, 140, temperature=0, extra=close_bias)["choices"][0]
        cut = chat(t, budget, 140, temperature=0, stop=stop, extra=close_bias)["choices"][0]
        d = {"reported": cut["budget"], "content": cut["content"][:80], "plain_content": plain["content"][:80]}
        d["ok_thinking_not_cut"] = cut["reasoning"] == plain["reasoning"] and WAIT in cut["reasoning"]
        hits = [i for i in (plain["content"].find(s) for s in stop) if i >= 0]
        d["ok_a_stop_string_in_the_answer"] = bool(hits)
        d["ok_answer_cut"] = bool(hits) and cut["content"] == plain["content"][: min(hits)] and cut["finish"] == "stop"
        d["ok_same_budget"] = cut["budget"]["thinking_tokens"] == plain["budget"]["thinking_tokens"]
        return d

    checks.run(t.name, "stop strings cut the answer only", stops)

    def nowait() -> dict[str, Any]:
        banned_first = {t.enc(v)[0] for s in (WAIT,) for c in (s, s.lower()) for v in (c, " " + c) if t.enc(v)}
        bias = {"logit_bias": {str(i): 8 for i in banned_first}}
        c = chat(t, {"max_thinking_tokens": 80, "banned_thinking_strings": [WAIT]}, 120, temperature=0, extra=bias)["choices"][0]
        free = chat(t, {"max_thinking_tokens": 80}, 120, temperature=0, extra=bias)["choices"][0]
        got = count(t, c["ids"])
        d = agree(c["budget"], got)
        d["ok_no_banned_token_in_thinking"] = not banned_first & set(c["ids"][: got["thinking_tokens"]])
        d["ok_bias_works_without_ban"] = bool(banned_first & set(free["ids"][:80]))
        return d

    checks.run(t.name, "NoWait banned strings", nowait)

    def intervention() -> dict[str, Any]:
        text = " Let me think step by step."
        c = chat(t, {"max_thinking_tokens": 60, "thinking_intervention": text, "intervention_at": 10}, 100, temperature=0)["choices"][0]
        ids = t.enc(text)
        got = count(t, c["ids"])
        d = agree(c["budget"], got)
        d["ok_intervention_at_10"] = c["ids"][10 : 10 + len(ids)] == ids
        d["ok_intervened"] = c["budget"].get("intervened") is True
        return d

    checks.run(t.name, "thinking intervention at 10", intervention)

    def answer_budget() -> dict[str, Any]:
        c = chat(t, {"max_thinking_tokens": 30, "max_answer_tokens": 8, "answer_prefix": " A:"}, 200, temperature=0,
                 extra=no_close)["choices"][0]  # fmt: skip
        got = count(t, c["ids"])
        d = agree(c["budget"], got)
        after = c["ids"][got["thinking_tokens"] + 1 :]
        d["after_close"] = len(after)
        d["ok_answer_tokens"] = c["budget"].get("answer_tokens") == 8 and c["budget"].get("answer_truncated") is True
        d["ok_eos_forced"] = after[-1:] == [t.eos] and len(after) == 9 and c["finish"] == "stop"
        return d

    checks.run(t.name, "answer budget 8", answer_budget)

    def scheduled() -> dict[str, Any]:
        brk = t.enc("\n\n")
        if len(brk) != 1:
            return {"skipped": "no single-token paragraph break", "ok_skipped": True}
        budget = {"max_thinking_tokens": 200, "alpha_moment_tokens": 120, "wait_probability": 1.0, "wait_decay": "constant",
                  "wait_strings": [WAIT]}  # fmt: skip
        c = chat(t, budget, 240, temperature=0, extra={"logit_bias": {str(brk[0]): 8}})["choices"][0]
        got = count(t, c["ids"])
        think = c["ids"][: got["thinking_tokens"]]
        d = agree(c["budget"], got)
        breaks_before = [i for i, x in enumerate(think) if x == brk[0] and i < 120]
        followed = [i for i in breaks_before if think[i + 1 : i + 1 + len(wait_ids)] == wait_ids]
        d["breaks_before_alpha"], d["followed_by_wait"] = len(breaks_before), len(followed)
        d["ok_every_break_waits"] = len(breaks_before) > 0 and len(followed) >= len(breaks_before) - 1
        d["ok_scheduled_waits"] = c["budget"].get("scheduled_waits") == got["wait_occurrences"]
        return d

    checks.run(t.name, "scheduled waits (AlphaOne)", scheduled)

    def xargs() -> dict[str, Any]:
        xargs = {"vllm_xargs": {"max_thinking_tokens": 40}, "ignore_eos": True, **no_close}
        c = chat(t, {}, 120, temperature=0, extra=xargs)["choices"][0]
        got = count(t, c["ids"])
        d = agree(c["budget"], got, waits=0)
        d["ok_close_at_40"] = got["thinking_tokens"] == 40 and got["closed"]
        return d

    checks.run(t.name, "vllm_xargs max 40", xargs)

    def margin() -> dict[str, Any]:
        """The logit-margin exit: with the widest margin it closes at the first break after the minimum."""
        text = next((b for b in ("\n\n", ".\n") if len(t.enc(b)) == 1), None)  # a break that is one token
        if text is None:
            return {"skipped": "no single-token break", "ok_skipped": True}
        brk = t.enc(text)[0]
        extra = {"logit_bias": {str(brk): 6}}  # breaks often (the close keeps its logit: the margin compares with it)
        budget = {"min_thinking_tokens": 30, "max_thinking_tokens": 200, "answer_prefix": PREFIX}
        free = chat(t, budget, 240, temperature=0, extra=extra)["choices"][0]
        c = chat(t, {**budget, "exit_margin": 64.0, "exit_breaks": [text]}, 240, temperature=0, extra=extra)["choices"][0]
        got = count(t, c["ids"])
        d = agree(c["budget"], got, waits=got["wait_occurrences"])
        n = got["thinking_tokens"]
        # the exit tests tokens whose text ends with the break; those below 30 thinking tokens do not count
        ends = [i + 1 for i, x in enumerate(free["ids"][:200]) if t.tokenizer.decode([x]).endswith(text) and i + 1 >= 30]
        d["break"], d["expected_close_at"], d["closed_at"] = text, (ends[0] if ends else None), n
        d["ok_closes_at_first_break_after_min"] = bool(ends) and n == ends[0] and c["ids"][:n] == free["ids"][:n]
        d["ok_close_and_prefix_follow"] = c["ids"][n : n + 1 + len(t.enc(PREFIX))] == [t.close, *t.enc(PREFIX)]
        d["ok_early_exit_reported"] = c["budget"].get("early_exit") is True and c["budget"].get("forced_end") is True
        d["ok_tokens_saved"] = c["budget"].get("exit_tokens_saved") == 200 - n
        d["free_run_thinking"] = count(t, free["ids"])["thinking_tokens"]
        d["ok_free_run_did_not_exit"] = free["budget"].get("early_exit") is not True
        return d

    checks.run(t.name, "logit-margin exit at the first break", margin)

    def vote() -> dict[str, Any]:
        """n = 4 seeded choices under one total budget and a vote: the majority of the choices' own answers."""
        from budgetforce.core.vote import majority

        body = {"n": 4, "budget_aggregate": "vote", "total_thinking_tokens": 160, "min_thinking_tokens": 10}
        r = t.client.chat.completions.create(model=t.model, messages=QUESTION, max_completion_tokens=80, temperature=1.0,
                                             seed=5, extra_body={**body, **close_bias}).model_dump()  # fmt: skip
        choices = sorted(r["choices"], key=lambda c: c["index"])
        v, by_hand = r.get("vote") or {}, majority([c["message"]["content"] or "" for c in choices])
        thinking = [(c.get("budget") or {}).get("thinking_tokens") for c in choices]
        d = {"vote": {k: v.get(k) for k in ("answer", "votes", "share", "choices", "thinking_tokens")}, "thinking": thinking}
        d["ok_majority_by_hand"] = (v.get("answer"), v.get("votes"), v.get("choices"), v.get("share")) == (
            by_hand.answer, by_hand.votes, 4, by_hand.share)
        d["ok_each_choice_within_its_share"] = all(x is not None and 10 <= x <= 40 for x in thinking)
        d["ok_total_thinking"] = v.get("thinking_tokens") == sum(x or 0 for x in thinking) <= 160
        d["ok_enforced"] = all((c.get("budget") or {}).get("enforced") is not False for c in choices)
        return d

    checks.run(t.name, "vote over n=4 (total 160)", vote)

    def untouched() -> dict[str, Any]:
        r = t.client.chat.completions.create(model=t.model, messages=QUESTION, max_completion_tokens=16, temperature=0).model_dump()
        return {"ok_no_budget_key": "budget" not in r["choices"][0], "ok_tokens": r["usage"]["completion_tokens"] == 16}

    checks.run(t.name, "no budget: vLLM's response", untouched)

    def refused() -> dict[str, Any]:
        long_text = " ".join(["alpha beta"] * 64)
        d: dict[str, Any] = {}
        for name, body in (
            ("wait_strings", {"min_thinking_tokens": 10, "wait_strings": [f"Wait {i}" for i in range(9)]}),
            ("answer_prefix", {"max_thinking_tokens": 10, "answer_prefix": long_text}),
            ("thinking_intervention", {"max_thinking_tokens": 10, "thinking_intervention": long_text}),
            ("max_thinking_token", {"max_thinking_token": 10}),
        ):
            try:
                chat(t, body, 100, temperature=0)
                d[f"ok_{name}_400"] = False
            except BadRequestError as e:
                err = (e.body or {}).get("error", e.body) if isinstance(e.body, dict) else {}
                d[f"ok_{name}_400"] = e.status_code == 400 and (err or {}).get("param") == name
        return d

    checks.run(t.name, "budgets beyond the tables: 400", refused)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", nargs=4, action="append", metavar=("NAME", "URL", "MODEL", "TOKENIZER"), required=True)
    ap.add_argument("--no-greedy-reference", action="append", default=[], metavar="NAME",
                    help="targets whose greedy tokens are not compared with s1's loop")
    ap.add_argument("--only", default="", help="comma-separated texts: run only the checks whose name holds one")
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta", default="{}", help="JSON merged into the output's header (command, device, versions)")
    args = ap.parse_args()
    checks = Checks([o for o in args.only.split(",") if o])
    header = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
              **json.loads(args.meta)}  # fmt: skip
    for name, url, model, tok in args.target:
        t = Target(name, url, model, AutoTokenizer.from_pretrained(tok))
        cases(t, checks, name not in args.no_greedy_reference)
        with open(args.out, "w") as f:  # after every target: a machine taken back keeps what was checked
            json.dump({**header, "checks": checks.rows}, f, indent=1)
    failed = [r for r in checks.rows if not r["pass"]]
    print(f"\n{len(checks.rows) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
