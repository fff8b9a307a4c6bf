"""What the command line writes: text and JSON safe for a terminal, tables, sizes and times, a progress line,
and :class:`CommandError`, the one-line error with an exit status.

Everything read from a store (ids, values, error texts) is printed with its control characters (C0, C1,
DEL), bidirectional overrides and isolates and other invisible characters escaped, as ``repr()`` escapes
them (``\\x1b``, ``\\u202e``); JSON output escapes them as ``\\uXXXX``. So a planted id cannot drive the
terminal, and JSON output decodes to the same strings.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


class CommandError(Exception):
    """An error reported as one line, with an exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


# -- safe text --------------------------------------------------------------------------------


def _escape(char: str) -> str:
    n = ord(char)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _json_escape(char: str) -> str:
    n = ord(char)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def safe(text: str, escape: Callable[[str], str] = _escape) -> str:
    """*text* with every character ``repr()`` would escape (C0 and C1 controls, DEL, bidi overrides and
    isolates, other invisible format characters, separators, lone surrogates) escaped; newlines kept."""
    if text.isprintable():
        return text
    return "\n".join(
        line if line.isprintable() else "".join(c if c.isprintable() else escape(c) for c in line)
        for line in text.split("\n")
    )


def dumps(doc: Any, *, indent: int | None = None, exact: bool = False) -> str:
    """JSON text of *doc* that shows the same on a terminal as it decodes: every character :func:`safe`
    escapes is written as a ``\\uXXXX`` escape (they can only occur inside strings, where that is valid).
    Not *exact*, what JSON cannot carry is written as its ``repr()``; *exact*, it raises (``TypeError``,
    ``ValueError`` for NaN, ``RecursionError``)."""
    separators = None if indent else (",", ":")
    default = None if exact else repr
    text = json.dumps(
        doc, indent=indent, default=default, ensure_ascii=False, allow_nan=not exact, separators=separators
    )
    return safe(text, _json_escape)


def out(text: str = "") -> None:
    print(safe(text))


def err(text: str) -> None:
    print(safe(text), file=sys.stderr)


def print_json(doc: Any) -> None:
    print(dumps(doc, indent=2))


# -- numbers and times --------------------------------------------------------------------------


def size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n:,} bytes"
    scaled = n / 1024
    for unit in ("KiB", "MiB"):
        if scaled < 1024:
            return f"{scaled:,.1f} {unit}"
        scaled /= 1024
    return f"{scaled:,.1f} GiB"


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def report(pairs: list[tuple[str, str]], noun: str, note: str = "", *, what: str = "", line: Any = err) -> int:
    """List ``ID: [what]problem`` for each pair (on standard error unless *line* says), then their count on
    standard error (``3 bad records`` + *note*); the exit status: 1 if there were any."""
    for sid, why in pairs:
        line(f"{sid}: {what}{why}")
    if pairs:
        err(f"{plural(len(pairs), noun)}{note}")
    return 1 if pairs else 0


def report_bad(bad: list[tuple[str, str]], path: str) -> int:
    """List records that could not be read on standard error; the exit status: 1 if there were any."""
    return report(bad, "bad record", f" (lockstore rm {path} ID removes one)")


class Progress:
    """A progress line on standard error, drawn only when it is a terminal, at most ten times a second.

    Call it with counts (``progress(done)`` or ``progress(done, total)``); as a context manager it also
    redraws the elapsed time every half second, for work that reports no counts (``verify``), and erases
    the line at the end.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.counts: tuple[int, ...] = ()
        self.start = time.monotonic()
        self.last = -1.0
        self.width = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, *counts: int) -> None:
        if not self.enabled:
            return
        self.counts = counts
        now = time.monotonic()
        if now - self.last >= 0.1 or (len(counts) == 2 and counts[0] == counts[1]):
            self._draw(now)

    def _draw(self, now: float) -> None:
        with self._lock:
            self.last = now
            text = " of ".join(f"{c:,}" for c in self.counts)
            line = safe(f"{self.label} {text} ({now - self.start:.0f} s)".replace("  ", " "))
            sys.stderr.write("\r" + line.ljust(self.width))
            sys.stderr.flush()
            self.width = len(line)

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._draw(time.monotonic())

    def __enter__(self) -> Progress:
        if self.enabled:
            self._draw(time.monotonic())
            self._thread = threading.Thread(target=self._tick, name="lockstore-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
