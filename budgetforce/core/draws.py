"""The counter-based draws forcing decides with: the same integers on the host, in torch and in Triton.

A draw is a hash of (request key, position, stream): reproducible, independent across requests
that share a seed (the key mixes in the prompt), and free of any generator state, so a
preempted request that is replayed draws exactly what it drew before. The functions take
Python ints or int64 tensors holding uint32 values alike.
"""

from __future__ import annotations

from typing import TypeVar

M32 = 0xFFFFFFFF
SCHEDULE_SALT = 0x2545F491  # the scheduled-wait stream (xored into the key's low word)

T = TypeVar("T")


def _mul32(x: T, c: int) -> T:
    """(x * c) mod 2**32 for 0 <= x < 2**32 without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & M32  # type: ignore[operator]


def mix32(x: T) -> T:
    """A 32-bit avalanche hash (lowbias32)."""
    x = x & M32  # type: ignore[operator]
    x = x ^ (x >> 16)  # type: ignore[operator]
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)  # type: ignore[operator]
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)  # type: ignore[operator]


def draw24(klo: T, khi: T, position: T) -> T:
    """A uniform integer below 2**24 per (key words, position)."""
    x = mix32(khi ^ mix32(position * 2 + 1))  # type: ignore[operator]
    x = mix32(x ^ klo)  # type: ignore[operator]
    return x >> 8  # type: ignore[operator]
