"""A logging filter that collapses repeats, so a flood of one message (a client hammering the
service, a descriptor limit reached on every accept) cannot fill the disk with log.

The same message (logger, level and text) is written at most `burst` times per `window_s`; the
next one written after that carries how many were dropped. Messages that differ are independent,
so an ordinary access log is untouched.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

FILTERED_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
_MAX_TRACKED = 4096  # distinct messages remembered; the oldest are forgotten first


class RepeatCollapsingFilter(logging.Filter):
    def __init__(self, burst: int = 5, window_s: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.burst, self.window_s, self._clock = burst, window_s, clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple, list] = OrderedDict()  # key -> [window start, written, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string is the handler's problem, not ours
            return True
        key = (record.name, record.levelno, text)
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                dropped = entry[2] if entry is not None else 0
                self._seen[key] = [now, 1, 0]
                self._seen.move_to_end(key)
                while len(self._seen) > _MAX_TRACKED:
                    self._seen.popitem(last=False)
                if dropped:
                    record.msg, record.args = f"{text} [{dropped} identical messages dropped in the last " \
                                              f"{self.window_s:g} s]", None
                return True
            if entry[1] < self.burst:
                entry[1] += 1
                return True
            entry[2] += 1
            return False


_installed = RepeatCollapsingFilter()


def install_repeat_filter(filter_: logging.Filter = _installed) -> None:
    """Attach the filter to every handler of the root and uvicorn loggers (handler filters also
    see records propagated from child loggers such as asyncio's). Safe to call again."""
    for name in FILTERED_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if filter_ not in handler.filters:
                handler.addFilter(filter_)
