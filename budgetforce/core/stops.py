"""Stop strings that end the answer only: never matched in the thinking, nor in the whitespace opening the answer.

R1-style models write "</think>\\n\\n" before the answer; lm-evaluation-harness's default stop
"\\n\\n" would otherwise cut every answer to "". The budget layer (`budgetforce.server`) feeds the
answer text, and only the answer text, through a `StopCutter`.
"""

from __future__ import annotations


class StopCutter:
    """Holds back the answer's tail until it cannot be the start of a stop string.

    The whitespace that opens the answer is passed through and never matched.

    Example:
        >>> c = StopCutter(["\\n\\n"])
        >>> c.push("\\n\\nThe answer")
        ('\\n\\nThe answe', False)
        >>> c.push(" is 4.\\n\\nMore")
        ('r is 4.', True)
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.hold = max(len(s) for s in stops) - 1
        self.buf = ""
        self.opened = False  # whether the answer's first non-whitespace character has come
        self.matched: str | None = None  # the stop string that cut the answer

    def push(self, text: str) -> tuple[str, bool]:
        """The text that is safe to show now, and whether a stop string has cut the answer."""
        lead = ""
        if not self.opened:
            body = text.lstrip()
            lead, text, self.opened = text[: len(text) - len(body)], body, bool(body)
        out, cut = self._match(text)
        return lead + out, cut

    def _match(self, text: str) -> tuple[str, bool]:
        self.buf += text
        hits = [(i, s) for s in self.stops if (i := self.buf.find(s)) >= 0]
        if hits:
            at, self.matched = min(hits)
            out, self.buf = self.buf[:at], ""
            return out, True
        cut = max(len(self.buf) - self.hold, 0)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self) -> str:
        """At the end of the answer: what was held back."""
        out, self.buf = self.buf, ""
        return out


def cut_answer(answer: str, stops: list[str]) -> tuple[str, str | None]:
    """A whole answer cut at its first stop string (after its opening whitespace): (text, the stop or None)."""
    cutter = StopCutter(stops)
    text, cut = cutter.push(answer)
    return (text, cutter.matched) if cut else (text + cutter.flush(), None)
