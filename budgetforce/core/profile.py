"""Model profiles: how a reasoning model family delimits its thinking.

A profile names the delimiters as text; `Profile.resolve` turns them into token ids once,
against the model's own tokenizer, so everything downstream works on ids alone.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from budgetforce.core.budget import DEFAULT_PARAGRAPH_BREAKS, Budget, BudgetError
from budgetforce.core.controller import ForcingPlan, ends_inside
from budgetforce.core.limits import LIMITS

_BREAK_CACHE = 64  # break-string tuples whose tokens a profile remembers (clients choose them)


class ProfileError(ValueError):
    """The model's profile cannot be determined or does not fit its tokenizer."""


class PlanError(BudgetError, ProfileError):
    """A request's budget that the model's tokenizer cannot carry (too many banned tokens, a long
    intervention); `param` names the request field. Both a `BudgetError` and a `ProfileError`."""


class TokenizerLike(Protocol):
    """The slice of a Hugging Face tokenizer that profiles need."""

    eos_token: Any
    pad_token: Any
    chat_template: Any

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int], **kwargs: Any) -> str: ...

    def get_vocab(self) -> dict[str, int]: ...

    def convert_tokens_to_ids(self, tokens: str) -> Any: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> Any: ...


@dataclass(frozen=True)
class Profile:
    """Delimiters and defaults of one reasoning model family.

    Args:
        name: Preset name (`r1-distill-qwen`, `s1`, ...).
        think_start: Text that opens the thinking.
        think_end: Text that closes it; its first token is what counts as the attempt to close.
        eos: Extra end-of-sequence strings besides the tokenizer's own `eos_token`.
        wait_strings: Default continuations that replace an early close (rotated).
        answer_prefix: Default text forced after a forced end of thinking.
        opens_in_prompt: The generation prompt must end inside the thinking; append
            `think_start` when the chat template does not.
        paragraph_breaks: Default texts that end a paragraph (scheduled waits, the logit-margin exit).
    """

    name: str
    think_start: str = "<think>"
    think_end: str = "</think>"
    eos: tuple[str, ...] = ()
    wait_strings: tuple[str, ...] = ("Wait",)
    answer_prefix: str = ""
    opens_in_prompt: bool = False
    paragraph_breaks: tuple[str, ...] = DEFAULT_PARAGRAPH_BREAKS

    def resolve(self, tokenizer: TokenizerLike) -> ResolvedProfile:
        """Encode the delimiters with ``tokenizer``; fail clearly when they do not exist."""

        def ids(text: str, what: str) -> tuple[int, ...]:
            out = tuple(tokenizer.encode(text, add_special_tokens=False))
            if not out:
                raise ProfileError(f"profile `{self.name}`: {what} {text!r} encodes to no tokens")
            return out

        vocab = tokenizer.get_vocab()
        eos_names = [str(tokenizer.eos_token)] if tokenizer.eos_token is not None else []
        eos_names += [e for e in self.eos if e in vocab]
        eos_ids = frozenset(vocab[e] for e in eos_names if e in vocab)
        if not eos_ids:
            raise ProfileError(f"profile `{self.name}`: the tokenizer has no end-of-sequence token")
        return ResolvedProfile(
            profile=self,
            think_start=ids(self.think_start, "think_start"),
            think_end=ids(self.think_end, "think_end"),
            eos=eos_ids,
            # every budgeted request plans (its wait strings, answer prefix): the same few strings
            encode=functools.lru_cache(maxsize=1024)(lambda s: tuple(tokenizer.encode(s, add_special_tokens=False))),
            answer_end=vocab.get(str(tokenizer.eos_token), -1),
            decode_token=lambda i: tokenizer.decode([i]),
            vocabulary=Vocabulary(tokenizer),
        )


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile in token ids, bound to one tokenizer."""

    profile: Profile
    think_start: tuple[int, ...]
    think_end: tuple[int, ...]
    eos: frozenset[int]
    encode: Any = field(repr=False, compare=False)
    answer_end: int = -1  # the tokenizer's own end-of-sequence id, forced after an answer budget
    decode_token: Any = field(default=None, repr=False, compare=False)  # id -> its text
    vocabulary: Vocabulary | None = field(default=None, repr=False, compare=False)
    _breaks: dict[tuple[str, ...], frozenset[int]] = field(default_factory=dict, repr=False, compare=False)

    def plan(self, budget: Budget) -> ForcingPlan:
        """The token-level plan for one request's budget (profile defaults fill the gaps).

        Raises:
            ProfileError: a wait string without tokens; `PlanError` (naming the request field)
                for a budget whose strings do not fit the processor's tables (`budgetforce.core.limits`).
        """
        waits = budget.wait_strings or self.profile.wait_strings
        wait_ids = tuple(self.encode(w) for w in waits)
        if any(not w for w in wait_ids):
            raise ProfileError(f"a wait string in {list(waits)!r} encodes to no tokens")
        prefix = self.profile.answer_prefix if budget.answer_prefix is None else budget.answer_prefix
        alpha_moment = budget.alpha_moment
        modes: dict[str, object] = {}  # the modes' plan fields
        if alpha_moment > 0:
            modes = {
                "alpha_moment": alpha_moment,
                "wait_probability": budget.wait_probability,
                "wait_decay": budget.wait_decay == "linear",
                "breaks": self.break_tokens(budget.paragraph_breaks or self.profile.paragraph_breaks),
            }
        if budget.exit_margin is not None:
            modes["exit_margin"] = budget.exit_margin
            modes["exit_breaks"] = self.break_tokens(budget.exit_breaks or self.profile.paragraph_breaks, "exit_breaks")
        plan = ForcingPlan(
            think_start=self.think_start,
            think_end=self.think_end,
            eos=self.eos,
            waits=wait_ids,
            answer_prefix=self.encode(prefix) if prefix else (),
            min_thinking=budget.min_thinking_tokens,
            max_thinking=budget.max_thinking_tokens,
            max_waits=budget.max_waits,
            banned=self.banned_tokens(budget.banned_thinking_strings or ()),
            intervention=self._intervention(budget.thinking_intervention),
            intervention_at=budget.intervention_at,
            max_answer=budget.max_answer_tokens,
            answer_end=self.answer_end,
            early_exit=budget.probe_every is not None,
            **modes,  # type: ignore[arg-type]
        )
        overrun = LIMITS.check(plan)
        if overrun is not None:
            param, why = overrun
            if param == "model":
                raise ProfileError(f"this model's delimiters do not fit budgetforce's tables: {why}")
            raise PlanError(f"`{param}` does not fit budgetforce's forcing tables for this model: {why}", param=param)
        return plan

    @property
    def _delimiters(self) -> frozenset[int]:
        """Tokens no mode may ban or treat as a paragraph break: the thinking's delimiters and EOS."""
        return frozenset(self.think_start) | frozenset(self.think_end) | self.eos

    def banned_tokens(self, strings: tuple[str, ...] | list[str]) -> frozenset[int]:
        """NoWait's banned ids: the first token of each string as a word may begin (s, " s", "S",
        " S", lower-case), never a delimiter or EOS; more than the tables hold (`LIMITS.banned_tokens`) is a `PlanError`.

        Example (Qwen): ["Wait"] -> {14190 "Wait", 13824 " Wait", 11489 "wait", 3783 " wait"}.
        """
        out: set[int] = set()
        never = self._delimiters
        for s in strings:
            cased = (s, s.capitalize(), s.lower())
            for variant in dict.fromkeys(v for c in cased for v in (c, " " + c)):
                ids = self.encode(variant)
                if not ids or ids[0] in never:
                    continue
                if variant.strip() and self.decode_token is not None and not self.decode_token(ids[0]).strip():
                    continue  # a tokenizer that writes the leading space as a token of its own: never ban a space
                out.add(ids[0])
        if len(out) > LIMITS.banned_tokens:
            raise PlanError(
                f"`banned_thinking_strings` bans {len(out)} distinct tokens (each string's first token with and "
                f"without a leading space, capitalised and lower-case); this model allows at most "
                f"{LIMITS.banned_tokens}: ban fewer strings",
                param="banned_thinking_strings",
            )
        return frozenset(out)

    def _intervention(self, text: str | None) -> tuple[int, ...]:
        if text is None:
            return ()
        ids = tuple(self.encode(text))
        if not ids:
            raise PlanError(f"`thinking_intervention` {text!r} encodes to no tokens", param="thinking_intervention")
        return ids  # its length is checked with the plan's other forced sequences (`LIMITS.check`)

    def break_tokens(self, strings: tuple[str, ...], param: str = "paragraph_breaks") -> frozenset[int]:
        """Paragraph-break ids (scheduled waits, the margin exit): tokens whose text ends with one of ``strings``
        (the `LIMITS.break_tokens` lowest ids, i.e. the most frequent merges), cached per tuple.

        Example (Qwen): ("\n\n",) -> {271 "\n\n", 382 ".\n\n", 401 ";\n\n", ...}.
        """
        strings = tuple(strings)
        found = self._breaks.get(strings)
        if found is None:
            if self.vocabulary is None:
                raise ProfileError(f"this profile was resolved without its vocabulary; `{param}` needs it")
            never = self._delimiters
            ids = [i for i in self.vocabulary.ending_with(strings) if i not in never]
            if not ids:
                raise PlanError(
                    f"no token of this model's vocabulary ends with any of {list(strings)!r}, so `{param}` would "
                    f"never act; choose other `{param}`",
                    param=param,
                )
            found = frozenset(ids[: LIMITS.break_tokens])
            if len(self._breaks) >= _BREAK_CACHE:
                self._breaks.pop(next(iter(self._breaks)), None)  # the oldest tuple
            self._breaks[strings] = found
        return found

    def open_thinking(self, prompt_ids: list[int]) -> list[int]:
        """Append the think-start delimiter when the profile needs it and the prompt lacks it."""
        if not self.profile.opens_in_prompt or ends_inside(prompt_ids, self.think_start, self.think_end):
            return prompt_ids
        return [*prompt_ids, *self.think_start]


def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the printable character each byte is written as in a vocabulary."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = _byte_to_char()


def byte_level(text: str) -> str:
    """``text`` as a byte-level BPE vocabulary writes it: "\n\n" -> "ĊĊ", " Wait" -> "ĠWait"."""
    return "".join(BYTE_TO_CHAR[b] for b in text.encode("utf-8"))


class Vocabulary:
    """A tokenizer's vocabulary as text, for suffix searches (paragraph-break tokens).

    Byte-level BPE vocabularies (GPT-2, Qwen, Llama 3) are searched as they are stored, with the
    suffix written in their byte alphabet, which is exact for tokens that end inside a UTF-8
    character too; any other vocabulary is decoded once, token by token, on first use.
    """

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        # (byte-level, [(id, stored text)], [(id, text)] of added tokens, which are stored as plain text)
        self._index: tuple[bool, list[tuple[int, str]], list[tuple[int, str]]] | None = None

    def _load(self) -> tuple[bool, list[tuple[int, str]], list[tuple[int, str]]]:
        with self._lock:
            if self._index is None:
                tok = self._tokenizer
                vocab = tok.get_vocab()
                decoder = getattr(tok, "added_tokens_decoder", None) or {}
                added = sorted((i, getattr(t, "content", str(t))) for i, t in decoder.items())
                probe = "\n\n a"
                pieces = tok.convert_ids_to_tokens(tok.encode(probe, add_special_tokens=False))
                if "".join(pieces) == byte_level(probe):
                    self._index = (True, sorted((i, t) for t, i in vocab.items() if i not in decoder), added)
                else:
                    self._index = (False, [(i, tok.decode([i])) for i in sorted(vocab.values())], [])
            return self._index

    def ending_with(self, suffixes: tuple[str, ...]) -> list[int]:
        """Ids (ascending) of the tokens whose text ends with one of ``suffixes``."""
        is_bytes, entries, added = self._load()
        plain = tuple(suffixes)
        coded = tuple(byte_level(s) for s in suffixes) if is_bytes else plain
        found = [i for i, text in entries if text.endswith(coded)]
        return sorted(found + [i for i, text in added if text.endswith(plain)])


PRESETS: dict[str, Profile] = {
    p.name: p
    for p in (
        # R1 distills close with the single token </think>; newer templates open the thinking in the prompt.
        Profile("r1-distill-qwen", opens_in_prompt=True),
        Profile("r1-distill-llama", opens_in_prompt=True),
        # s1/s1.1 think inside the assistant turn; s1 stops on <|im_start|> and appends "answer\n".
        Profile(
            "s1",
            think_start="<|im_start|>think\n",
            think_end="<|im_start|>answer\n",
            eos=("<|im_end|>",),
            answer_prefix="Final Answer:",
            opens_in_prompt=True,
        ),
        Profile("qwq", eos=("<|im_end|>", "<|endoftext|>"), opens_in_prompt=True),
        Profile("qwen3", eos=("<|im_end|>", "<|endoftext|>")),
        Profile("generic"),
    )
}


def detect_profile(tokenizer: TokenizerLike, model_name: str = "") -> Profile:
    """Pick the preset that fits ``tokenizer`` and its chat template.

    Example:
        a tokenizer whose template writes ``<｜Assistant｜>`` and whose vocabulary has a
        ``<think>`` token is an R1 distill; a plain Qwen2.5 tokenizer is not a reasoning
        model and raises `ProfileError`.
    """
    vocab = tokenizer.get_vocab()
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return detect_from_template(template, set(vocab), str(tokenizer.pad_token or ""), len(vocab), model_name)


def detect_from_template(
    template: str, tokens: set[str], pad_token: str = "", vocab_size: int = 0, model_name: str = ""
) -> Profile:
    """Detection on the raw facts, so it can be tested on a template file alone."""
    has_think = "<think>" in tokens and "</think>" in tokens or "<think>" in template
    chatml = "<|im_start|>" in template
    if "<|im_start|>think" in template or "<|im_start|>answer" in template:
        return PRESETS["s1"]
    # Early R1 templates do not mention <think>, but the tokenizer still has the token.
    if "<｜Assistant｜>" in template and (has_think or not tokens):
        # Llama 3's vocabulary has 128k entries, Qwen2's 151k.
        return PRESETS["r1-distill-llama" if 128000 <= vocab_size < 150000 else "r1-distill-qwen"]
    if chatml and "enable_thinking" in template:
        return PRESETS["qwen3"]
    if chatml and "<think>" in template:
        return PRESETS["qwq"]
    if chatml and not has_think and (pad_token == "<|fim_pad|>" or "s1" in model_name.lower().split("/")[-1]):
        # s1/s1.1 ship Qwen2.5's template; s1's training sets the pad token to <|fim_pad|>.
        return PRESETS["s1"]
    if "<think>" in tokens and "</think>" in tokens:
        return PRESETS["generic"]
    raise ProfileError(
        "cannot tell how this model delimits its thinking (no <think>/</think> tokens and no known "
        f"reasoning chat template); pass a profile explicitly, one of: {', '.join(PRESETS)}"
    )


def get_profile(name: str) -> Profile:
    """A preset by name, with a readable error for unknown names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; choose one of: {', '.join(PRESETS)}") from None
