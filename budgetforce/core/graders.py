"""Answer extraction and grading, as pure functions (simple-evals style: text in, float out).

Only the answer part of a response is graded: reasoning models may write and discard many
candidate answers while thinking, so anything before the last `</think>` is ignored. Within the
answer part the last `\\boxed{...}` wins, then the last "The answer is X" / "Answer: X" /
"#### X"; integer graders finally fall back to the last number in the answer part.
"""

from __future__ import annotations

import logging
import re
import threading

logger = logging.getLogger(__name__)

THINK_END = "</think>"
BOXED_COMMANDS = ("\\boxed", "\\fbox")
ANSWER_IS_PATTERN = re.compile(
    r"(?i)(?:final\s+answer|the\s+answer|answer)\s*(?:is\s*:?|:)\s*(.+?)\s*(?:\.(?:\s|$)|\n|$)"
)
HASH_ANSWER_PATTERN = re.compile(r"####\s*([^\n]+)")
NUMBER_PATTERN = re.compile(r"-?\d+(?:\.\d+)?")
LATEX_TEXT_PATTERN = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
MATH_VERIFY_TIMEOUT_S = 5
INTEGER_NOISE = ("\\$", "$", ",", "\\!", "\\%", "%", "^\\circ", "^{\\circ}", "\\,", "\\;", "\\ ")


def answer_part(content: str, reasoning: str = "") -> str:
    """The text after the thinking: after the last `</think>` when the content still holds one."""
    if THINK_END in content:
        return content.rsplit(THINK_END, 1)[1]
    return content


def extract_boxed(text: str) -> str | None:
    """The argument of the last `\\boxed{...}` or `\\fbox{...}` (nested braces kept), else None.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> extract_boxed("no box here") is None
    True
    """
    start, command = max((text.rfind(cmd), cmd) for cmd in BOXED_COMMANDS)
    if start < 0:
        return None
    rest = text[start + len(command) :]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        match = re.match(r"\s*([^\s$]+)", rest)  # `\boxed 5` form
        return match.group(1) if match else None
    rest = rest.lstrip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i].strip()
    return None  # unbalanced: the answer was cut off


def extract_answer(text: str) -> str | None:
    """The final answer stated in an answer part: boxed first, then "answer is" / "####" forms."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (ANSWER_IS_PATTERN, HASH_ANSWER_PATTERN):
        matches = pattern.findall(text)
        if matches:
            return matches[-1].strip().strip("$ ").rstrip(".")
    return None


def parse_integer(text: str | None) -> int | None:
    """The integer an answer string states ("$1,234", "18.00", "x = 7 eggs"), else None."""
    if text is None:
        return None
    text = LATEX_TEXT_PATTERN.sub(r"\1", text)
    for noise in INTEGER_NOISE:
        text = text.replace(noise, "")
    text = text.rsplit("=", 1)[-1]
    match = NUMBER_PATTERN.search(text)
    if match is None:
        return None
    value = float(match.group(0))
    return int(value) if value.is_integer() else None


def gsm8k_reference(solution: str) -> str:
    """GSM8K's reference answer: the text after `####` on the last line, commas stripped."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


def grade_integer(reference: str, response_text: str) -> tuple[float, str | None]:
    """1.0 when the response's final integer equals the reference (GSM8K, AIME: "025" == 25)."""
    text = answer_part(response_text)
    extracted = extract_answer(text)
    if extracted is None:
        numbers = NUMBER_PATTERN.findall(text.replace(",", ""))
        extracted = numbers[-1] if numbers else None
    predicted = parse_integer(extracted)
    gold = parse_integer(reference)
    if gold is None:
        raise ValueError(f"reference answer {reference!r} is not an integer")
    return float(predicted is not None and predicted == gold), extracted


def normalize_latex(text: str) -> str:
    """A light textual normal form, the fallback when math-verify cannot parse either side."""
    text = LATEX_TEXT_PATTERN.sub(r"\1", text)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "$", "dfrac", "tfrac"):
        text = text.replace(token, "frac" if token in ("dfrac", "tfrac") else "")
    return re.sub(r"\s+", "", text).rstrip(".").lower()


def grade_math(reference: str, response_text: str) -> tuple[float, str | None]:
    """1.0 when the final answer is mathematically equivalent to the LaTeX reference (math-verify).

    Falls back to comparing light textual normal forms, which catches answers math-verify does
    not parse (names, multiple-choice letters).
    """
    from math_verify import parse, verify  # lazy: sympy import costs about a second

    text = answer_part(response_text)
    extracted = extract_answer(text)
    if extracted is None:
        return 0.0, None
    if normalize_latex(extracted) == normalize_latex(reference):
        return 1.0, extracted
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    seconds = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(f"${reference}$", parsing_timeout=seconds)
        predicted = parse(f"${extracted}$", parsing_timeout=seconds)
        if not gold or not predicted:
            return 0.0, extracted
        return float(verify(gold, predicted, timeout_seconds=seconds)), extracted
    except Exception:  # math-verify raises on exotic expressions; count them as wrong
        logger.debug("math-verify failed on %r vs %r", reference, extracted, exc_info=True)
        return 0.0, extracted
