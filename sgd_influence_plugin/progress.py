"""Progress reporters: pass one to the API as ``progress(stage, done, total)``."""

from __future__ import annotations

from typing import Callable, Dict


class TqdmProgress:
    """A terminal bar per stage (tqdm), or nothing when ``enabled`` is False."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bars: Dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` steps of ``stage`` are finished."""
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None or done == 1:
            if bar is not None:
                bar.close()
            bar = self._bars[stage] = tqdm(total=total, desc=stage, leave=False)
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()
            self._bars.pop(stage, None)


class LogProgress:
    """One log line per stage at every ``every`` share of progress (for the console's log)."""

    def __init__(self, log: Callable[[str], None], every: float = 0.25):
        self.log, self.every = log, every

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` steps of ``stage`` are finished."""
        step = max(1, int(total * self.every))
        if done % step == 0 or done == total:
            self.log(f"{stage}: {done}/{total} steps")
