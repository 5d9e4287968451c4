"""Stop signals, torch-free: SIGTERM and SIGINT become `Interrupted`, raised where stopping leaves no half-written
file, and a process started for a sweep dies with its parent.

- `interrupts`: while a sweep runs (main thread), SIGTERM and SIGINT raise `Interrupted` at once; a second signal
  ends the process without cleanup.
- `deferred_interrupts`: the signal is only noted, and `raise_if_interrupted` raises it at the next safe point; for
  code that waits inside C extensions (Ray's ``ray.wait``).
- `raise_if_interrupted`: the check at safe points (between trials, at every batch), in case a handler's exception
  was swallowed.
- `stop_on_sigterm`: a worker process's handler: SIGTERM stops its trial.
- Where a handler's `Interrupted` cannot propagate (a weakref callback, a ``__del__``), it is dropped without a
  traceback (`_quiet_unraisable`) and the next safe point stops the work.
- `die_with_parent`: Linux sends a worker SIGTERM when its parent dies, even by SIGKILL.

The engines (`ablations.engines`) and the code that trains (`ablations.trial`) both use these; neither imports the
other for them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

__all__ = [
    "Interrupted",
    "deferred_interrupts",
    "die_with_parent",
    "ignoring_sigint",
    "interrupts",
    "raise_if_interrupted",
    "stop_on_sigterm",
]

PR_SET_PDEATHSIG = 1  # linux/prctl.h

try:
    LIBC: Optional[ctypes.CDLL] = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc: no prctl, workers rely on being stopped by the main process
    LIBC = None


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: stop now. A BaseException, so that no ``except Exception`` records it as the
    failure of the trial that was running."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


_received: list[int] = []  # the stop signals this process received


def _exit_at_once(signum: int, frame: Any) -> None:
    os._exit(128 + signum)


def _raise_interrupted(signum: int, frame: Any) -> None:
    signal.signal(signum, _exit_at_once)  # a second one while stopping ends the process without cleanup
    _received.append(signum)
    raise Interrupted(signum)


def _note_signal(signum: int, frame: Any) -> None:
    signal.signal(signum, _exit_at_once)  # a second one while stopping ends the process without cleanup
    _received.append(signum)


def raise_if_interrupted() -> None:
    """Raise `Interrupted` if a stop signal arrived: the handler raises at once, but where Python swallows exceptions
    (a ``__del__`` that ran just then, a callback) only these checks at safe points stop the work."""
    if _received:
        raise Interrupted(_received[0])


@contextmanager
def _handling(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """`handler` for SIGTERM and SIGINT while the block runs; the previous handlers afterwards."""
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def interrupts() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM and SIGINT raise `Interrupted`; a second signal ends the
    process at once. Lightning keeps calling this handler from its own SIGTERM handler during ``fit``."""
    _received.clear()
    sys.unraisablehook = _quiet_unraisable
    try:
        with _handling(_raise_interrupted):
            yield
    finally:
        sys.unraisablehook = sys.__unraisablehook__


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM and SIGINT are only noted, and `raise_if_interrupted`
    raises `Interrupted` at the next safe point; a second signal ends the process at once. For code that waits
    inside C extensions (Ray's ``ray.wait``), where an exception raised by a signal handler turns into a
    ``SystemError``: wait with a timeout and call `raise_if_interrupted` between waits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _handling(_note_signal):
        yield


@contextmanager
def ignoring_sigint() -> Iterator[None]:
    """SIGINT ignored while the block runs (in the main thread): a process started meanwhile inherits that, so a
    worker never sees a terminal's Ctrl-C, even while it is still importing; the main process stops it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_unraisable(unraisable: Any) -> None:
    """``sys.unraisablehook``: an `Interrupted` raised where Python cannot propagate it (the signal arrived inside a
    weakref callback or a ``__del__``) is dropped without a traceback; `raise_if_interrupted` stops the work at its
    next safe point. Anything else goes to Python's own hook."""
    if isinstance(unraisable.exc_value, Interrupted):
        return
    sys.__unraisablehook__(unraisable)


def _stop_worker(signum: int, frame: Any) -> None:
    """A worker's SIGTERM handler: stop the trial (`Interrupted`); a second SIGTERM ends the process at once."""
    signal.signal(signal.SIGTERM, _exit_at_once)
    _received.append(signum)
    raise Interrupted(signum)


def stop_on_sigterm() -> None:
    """Make this (worker) process ignore SIGINT and raise `Interrupted` on SIGTERM; a second SIGTERM ends it at
    once. A terminal's Ctrl-C goes to the whole process group: the main process answers it by sending each worker
    SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)
    sys.unraisablehook = _quiet_unraisable


def die_with_parent(parent: int) -> None:
    """Have Linux send this process SIGTERM when its parent (pid `parent`) dies, even by SIGKILL; elsewhere a no-op."""
    if LIBC is None or not sys.platform.startswith("linux"):
        return
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)
