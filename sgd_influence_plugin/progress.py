"""Progress reporters: pass one to the API as ``progress(stage, done, total)``.

- :class:`TqdmProgress`: a tqdm bar per stage on a terminal; when the stream is not a terminal
  (a log file, a pipe) or a terminal without a width, it writes one plain line when each
  stage (of each trial) ends instead of tqdm's carriage-return updates.
- :class:`LogProgress`: a line at every ``every`` share of a stage through a log callback.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Callable, Dict, Optional, TextIO, Tuple


class LogProgress:
    """One line per stage each time another ``every`` share of it is done, and at the end.

    A stage that starts again (``done`` smaller than before, e.g. the next trial's training)
    starts its count again. Lines read ``"replay: 47/94 (50%)"``.
    """

    def __init__(self, log: Callable[[str], None], every: float = 0.1):
        if not 0 < every <= 1:
            raise ValueError(f"every must be in (0, 1], not {every}")
        self.log = log
        self._shares = max(1, round(1 / every))  # lines per stage
        self._last: Dict[str, Tuple[int, int]] = {}  # stage -> (done, shares done) last call

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` steps of ``stage`` are finished."""
        if total <= 0:
            return
        shares = min(done, total) * self._shares // total
        last_done, last_shares = self._last.get(stage, (0, 0))
        if done < last_done:  # the stage started again
            last_shares = 0
        self._last[stage] = (done, shares)
        if shares > last_shares:
            self.log(f"{stage}: {done}/{total} ({100 * min(done, total) // total}%)")


class TqdmProgress:
    """A terminal bar per stage (tqdm); one line per finished stage when ``stream`` is not a
    terminal, or is one that reports no width; nothing when ``enabled`` is False.

    Args:
        enabled: False = silent.
        stream: where to write (default ``sys.stderr``, looked up at each call).

    """

    def __init__(self, enabled: bool = True, stream: Optional[TextIO] = None):
        self.enabled = enabled
        self.stream = stream
        self._bars: Dict[str, object] = {}
        self._lines: Optional[LogProgress] = None

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _is_terminal(self) -> bool:
        out = self._out()
        try:
            if not out.isatty():
                return False
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False
        try:
            return os.get_terminal_size(out.fileno()).columns > 0
        except (AttributeError, io.UnsupportedOperation):  # a terminal-like object: trust it
            return True
        except (OSError, ValueError):  # a terminal that reports no size
            return False

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` steps of ``stage`` are finished."""
        if not self.enabled:
            return
        if not self._is_terminal():
            if self._lines is None:  # one line when a stage ends (every = 1)
                self._lines = LogProgress(
                    lambda m: print(m, file=self._out(), flush=True), every=1.0
                )
            self._lines(stage, done, total)
            return
        from tqdm import tqdm

        # No monitor thread: with a second thread alive, CPython may notice a Ctrl-C only
        # when that thread next runs (up to its 10 s interval), and stops are requested by
        # signal (see interrupts). The bars are refreshed on every update anyway.
        tqdm.monitor_interval = 0
        bar = self._bars.get(stage)
        if bar is None or done < bar.n:  # a new stage, or the stage started again
            if bar is not None:
                bar.close()
            bar = self._bars[stage] = tqdm(total=total, desc=stage, leave=False, file=self._out())
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            self._bars.pop(stage, None)
