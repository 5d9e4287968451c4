"""Stop signals, torch-free: SIGTERM and SIGINT raise `Interrupted` where stopping leaves no half-written file (a
second one ends the process at once; where it cannot propagate, `raise_if_interrupted` at the next safe point); a
process started for a sweep dies with its parent. Also Lightning's log settings for sweeps (`quiet_lightning`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; a BaseException, so no ``except Exception`` records it as a trial's failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports it."""
        return 128 + self.signum


_received: list[int] = []  # the stop signals this process received


def _exit_at_once(signum: int, frame: Any) -> None:
    os._exit(128 + signum)


def _note_signal(signum: int, frame: Any) -> None:
    signal.signal(signum, _exit_at_once)  # a second one while stopping ends the process without cleanup
    _received.append(signum)


def _raise_interrupted(signum: int, frame: Any) -> None:
    _note_signal(signum, frame)
    raise Interrupted(signum)


def _quiet_unraisable(unraisable: Any) -> None:
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)


def raise_if_interrupted() -> None:
    """Raise `Interrupted` if a stop signal arrived: the check at safe points (between trials, every batch)."""
    if _received:
        raise Interrupted(_received[0])


@contextmanager
def _handling(handler: Callable[[int, Any], None] | signal.Handlers, *signums: int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def interrupts() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Interrupted` while the block runs (Lightning's own handler calls this one)."""
    _received.clear()
    sys.unraisablehook = _quiet_unraisable
    try:
        with _handling(_raise_interrupted, signal.SIGTERM, signal.SIGINT):
            yield
    finally:
        sys.unraisablehook = sys.__unraisablehook__


def deferred_interrupts() -> AbstractContextManager[None]:
    """SIGTERM and SIGINT only noted while the block runs, for waits inside C extensions (``ray.wait``)."""
    return _handling(_note_signal, signal.SIGTERM, signal.SIGINT)


def ignoring_sigint() -> AbstractContextManager[None]:
    """SIGINT ignored while the block runs, and by the processes started meanwhile: the main process stops them."""
    return _handling(signal.SIG_IGN, signal.SIGINT)


def stop_on_sigterm() -> None:
    """A worker ignores SIGINT (the main process answers a Ctrl-C with SIGTERM) and raises on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    sys.unraisablehook = _quiet_unraisable


def die_with_parent(parent: int) -> None:
    """Linux sends this process SIGTERM when its parent (`parent`) dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, linux/prctl.h
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def quiet_lightning() -> None:
    """Drop Lightning's per-Trainer banners ("GPU available", tips, "LOCAL_RANK ...") and deprecation chatter; its
    import resets ``lightning.pytorch`` to INFO, so each process calls this after it."""
    for package in ("pytorch", "fabric"):
        for name in ("", ".utilities.rank_zero", ".accelerators.cuda"):
            logging.getLogger(f"lightning.{package}{name}").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
