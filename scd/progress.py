"""Progress that suits where it is shown: a tqdm bar on a terminal, a short line every few percent in a log."""

from __future__ import annotations

import sys

from tqdm import tqdm


class LogProgress(tqdm):
    """tqdm for a log file or a pipe: one plain line each time another `every` percent is done, and at the end,
    instead of a stream of carriage returns."""

    def __init__(self, *args, every: float = 10.0, **kwargs) -> None:
        self._every, self._shown = every, -1.0
        kwargs.setdefault("mininterval", 0.0)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not self.total:
            return True
        percent = 100.0 * self.n / self.total
        if percent >= 100.0 or percent - self._shown >= self._every:
            if percent >= 100.0 and self._shown >= 100.0:
                return True
            self._shown = percent
            line = self.format_meter(**{**self.format_dict, "ncols": 0}).replace("\r", "")
            self.fp.write(line.strip() + "\n")
            self.fp.flush()
        return True


    def close(self) -> None:
        if not self.disable:
            self.display()  # the last line, then no bar to clear or end
            self._decr_instances(self)
            self.disable = True
        super().close()


def progress(iterable=None, *, disable: bool = False, **kwargs) -> tqdm:
    """A progress bar over `iterable` (or `total=`): tqdm on a terminal, `LogProgress` when stderr is not one."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if interactive or disable:
        return tqdm(iterable, disable=disable, **kwargs)
    return LogProgress(iterable, **kwargs)
