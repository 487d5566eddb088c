"""`StatsBoard`: per-request forcing stats, shared from the engine process back to the frontend."""

from __future__ import annotations

import logging
import os
import random
import tempfile

import numpy as np
import torch

from budgetforce.core.controller import Action
from budgetforce.core.layout import NS, S
from budgetforce.vllm.wire import BOARD_KEYS, CAPACITY
from budgetforce.vllm.wire import split_words as _split

log = logging.getLogger(__name__)


def _lock_dir() -> str:
    """Where the boards' lock files live: beside the shared memory where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _holds(row: list[int], nonce: int) -> bool:
    """Whether a stats row is this request's (its nonce): a reused row never hands over another's numbers."""
    return (row[S.NONCE_LO], row[S.NONCE_HI]) == _split(nonce)


class StatsBoard:
    """Per-request forcing stats, shared from the engine process back to the frontend.

    A shared-memory int32 table, one row per request key (`layout.S` columns: nonce, tokens
    consumed, waits, the pending action and decision). The frontend hands keys out round robin
    with a fresh nonce; the processor writes the row every step (on CUDA through a mapped device
    view, so the write lands before vLLM returns the step's tokens). A reader whose nonce does
    not match sees no stats rather than someone else's. Where the engine cannot open the board
    (another node), stats are absent and responses say so.

    Several API server processes (`--api-server-count N`) share one board: behind the table sit
    a lease per key (the holding process's pid) and a cursor, and `acquire` takes a key under an
    exclusive file lock, so no two processes ever hold one key. A dead process's leases are
    reclaimed when the keys run out.
    """

    def __init__(self, name: str | None = None, capacity: int = CAPACITY, create: bool | None = None) -> None:
        from multiprocessing import shared_memory

        create = name is None if create is None else create
        size = capacity * NS * 4 + (BOARD_KEYS + 1) * 4  # the table, then the leases and the cursor
        self._shm = shared_memory.SharedMemory(name=name, create=create, size=size)
        self._owner = create
        self.table = torch.frombuffer(self._shm.buf, dtype=torch.int32, count=capacity * NS).view(-1, NS)
        tail = np.frombuffer(self._shm.buf, dtype=np.int32, count=BOARD_KEYS + 1, offset=capacity * NS * 4) \
            if len(self._shm.buf) >= size else None  # fmt: skip
        self._leases = tail[:BOARD_KEYS] if tail is not None else None  # pid holding each key, 0: free
        self._cursor = tail[BOARD_KEYS:] if tail is not None else None
        self._lock: int | None = None
        self._registered = False

    @classmethod
    def attach(cls, name: str) -> StatsBoard | None:
        try:
            return cls(name)
        except (FileNotFoundError, OSError, ValueError) as e:
            log.warning("budgetforce: stats board %s cannot be opened here (%r): stats are absent", name, e)
            return None

    @classmethod
    def shared(cls, name: str) -> StatsBoard:
        """The board ``name`` for an API server process: created by the first, attached by the others."""
        try:
            return cls(name, create=True)
        except FileExistsError:
            return cls(name, create=False)

    @property
    def name(self) -> str:
        return self._shm.name

    @property
    def _lock_path(self) -> str:
        return os.path.join(_lock_dir(), f"{self.name.lstrip('/')}.lock")

    def acquire(self) -> tuple[int, int]:
        """A key (round robin over the free ones, so a key is reused late) and a fresh nonce for one request."""
        import fcntl

        assert self._leases is not None and self._cursor is not None, "a board attached by the engine hands out no keys"
        if self._lock is None:
            self._lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            key = self._next_free()
            if key is None:
                self._reclaim()
                key = self._next_free()
            if key is None:
                raise RuntimeError("too many budgeted requests in flight for the stats board")
            self._leases[key] = os.getpid()
            self._cursor[0] = (key + 1) % BOARD_KEYS
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        return key, random.getrandbits(62)

    def _next_free(self) -> int | None:
        assert self._leases is not None and self._cursor is not None
        free = np.flatnonzero(self._leases == 0)  # ascending
        if not free.size:
            return None
        at = int(np.searchsorted(free, int(self._cursor[0])))  # the first free key from the cursor on, wrapping
        return int(free[at % free.size])

    def _reclaim(self) -> None:
        """Free the keys of API processes that have died holding them."""
        assert self._leases is not None
        for pid in set(self._leases[self._leases != 0].tolist()):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                self._leases[self._leases == pid] = 0
            except PermissionError:  # alive, another user's
                pass

    def release(self, key: int) -> None:
        assert self._leases is not None
        self._leases[key] = 0

    def waits(self, key: int, nonce: int, token_ids: list[int]) -> int | None:
        """Waits inserted into a finished request's ``token_ids``; None if the board lacks them."""
        row = self._row(key, nonce, token_ids)
        if row is None:
            return None
        waits = row[S.WAITS]
        if row[S.SEEN] == len(token_ids) - 1:  # the last token was sampled under the recorded action: settle it
            if row[S.ACT] == Action.GUARD and row[S.DEC] and token_ids[-1] == row[S.ATOK]:
                waits += 1
        return waits

    def scheduled_waits(self, key: int, nonce: int, token_ids: list[int]) -> int | None:
        """Scheduled waits (a wait schedule's insertions) in a finished request; None if the board lacks them.

        A wait is scheduled when its paragraph break is consumed, so the count is final once the
        break's successor has been sampled (a break as the very last token schedules nothing seen).
        """
        row = self._row(key, nonce, token_ids)
        return None if row is None else row[S.SCHED]

    def failure(self, key: int, nonce: int) -> int | None:
        """Why this request's budget stopped being forced (`layout.FAIL_*`), 0 if it is forced, None if unknown."""
        row = self.table[key].tolist()
        return row[S.FAIL] if _holds(row, nonce) else None  # None: the engine never wrote this request's row

    def exited(self, key: int, nonce: int) -> bool:
        """Whether an early exit closed this request's thinking (`request_exit` carried out, or the logit margin)."""
        row = self.table[key].tolist()
        return _holds(row, nonce) and bool(row[S.EXITED])

    def request_exit(self, key: int, nonce: int) -> bool:
        """Ask the engine to close this request's thinking at its next step (an early exit).

        False when the row is not (or no longer) this request's.
        """
        row = self.table[key]
        if not _holds(row.tolist(), nonce):
            return False
        row[S.EXIT] = 1
        return True

    def _row(self, key: int, nonce: int, token_ids: list[int]) -> list[int] | None:
        """The request's row once the engine has consumed all but at most the last token; else None."""
        row = self.table[key].tolist()
        if not _holds(row, nonce) or row[S.FAIL]:
            return None
        if row[S.SEEN] not in (len(token_ids), len(token_ids) - 1):
            return None
        return row

    def device_view(self, device: torch.device) -> torch.Tensor | None:
        """The table as the processor writes it: itself on the CPU, a mapped view on CUDA."""
        if device.type != "cuda":
            return self.table
        try:
            ptr, nbytes = self.table.data_ptr(), self.table.numel() * 4
            rc = torch.cuda.cudart().cudaHostRegister(ptr, nbytes, 2)  # cudaHostRegisterMapped
            if int(rc) != 0:
                raise RuntimeError(f"cudaHostRegister returned {rc}")
            self._registered = True

            class _View:  # UVA: the registered host address is valid on the device
                __cuda_array_interface__ = {
                    "shape": tuple(self.table.shape), "typestr": "<i4", "data": (ptr, False),
                    "version": 3, "strides": None,
                }

            return torch.as_tensor(_View(), device=device)
        except Exception as e:  # noqa: BLE001
            log.warning("budgetforce: cannot map the stats board into device memory (%r): stats are absent", e)
            return None

    def close(self) -> None:
        if self._registered:
            try:
                torch.cuda.cudart().cudaHostUnregister(self.table.data_ptr())
            except Exception:  # noqa: BLE001
                pass
        del self.table
        self._leases = self._cursor = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if self._owner:  # the creator leaves no lock file behind
            try:
                os.unlink(self._lock_path)
            except FileNotFoundError:
                pass
        self._shm.close()
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:  # an engine process's resource tracker got there first
                pass
