"""Model profiles: how a reasoning model family delimits its thinking.

A profile names the delimiters as text; `Profile.resolve` turns them into token ids once,
against the model's own tokenizer, so everything downstream works on ids alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from budgetforce.budget import Budget
from budgetforce.controller import ForcingPlan, ends_inside


class ProfileError(ValueError):
    """The model's profile cannot be determined or does not fit its tokenizer."""


class TokenizerLike(Protocol):
    """The slice of a Hugging Face tokenizer that profiles need."""

    eos_token: Any
    pad_token: Any
    chat_template: Any

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def get_vocab(self) -> dict[str, int]: ...

    def convert_tokens_to_ids(self, tokens: str) -> Any: ...


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
    """

    name: str
    think_start: str = "<think>"
    think_end: str = "</think>"
    eos: tuple[str, ...] = ()
    wait_strings: tuple[str, ...] = ("Wait",)
    answer_prefix: str = ""
    opens_in_prompt: bool = False

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
            encode=lambda s: tuple(tokenizer.encode(s, add_special_tokens=False)),
        )


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile in token ids, bound to one tokenizer."""

    profile: Profile
    think_start: tuple[int, ...]
    think_end: tuple[int, ...]
    eos: frozenset[int]
    encode: Any = field(repr=False, compare=False)

    def plan(self, budget: Budget) -> ForcingPlan:
        """The token-level plan for one request's budget (profile defaults fill the gaps)."""
        waits = budget.wait_strings or self.profile.wait_strings
        wait_ids = tuple(self.encode(w) for w in waits)
        if any(not w for w in wait_ids):
            raise ProfileError(f"a wait string in {list(waits)!r} encodes to no tokens")
        prefix = self.profile.answer_prefix if budget.answer_prefix is None else budget.answer_prefix
        return ForcingPlan(
            think_start=self.think_start,
            think_end=self.think_end,
            eos=self.eos,
            waits=wait_ids,
            answer_prefix=self.encode(prefix) if prefix else (),
            min_thinking=budget.min_thinking_tokens,
            max_thinking=budget.max_thinking_tokens,
            max_waits=budget.max_waits,
        )

    def open_thinking(self, prompt_ids: list[int]) -> list[int]:
        """Append the think-start delimiter when the profile needs it and the prompt lacks it."""
        if not self.profile.opens_in_prompt or ends_inside(prompt_ids, self.think_start, self.think_end):
            return prompt_ids
        return [*prompt_ids, *self.think_start]


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
