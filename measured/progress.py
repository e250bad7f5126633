"""Progress of long commands (measure, quality, validate, probe): a tqdm bar with points done, ETA and the
current point on a terminal; one plain line per point (with the same counts and ETA) in logs and CI, where a
bar's carriage returns would only garble the file."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "point", file=None):
        self.file = file or sys.stderr
        self.total, self.desc, self.n, self.t0 = total, desc, 0, time.monotonic()
        tty = hasattr(self.file, "isatty") and self.file.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.file, dynamic_ncols=True) if tty else None

    def current(self, label: str) -> None:
        """Show the point being worked on (the bar's postfix; nothing in a log until it is done)."""
        if self.bar is not None:
            self.bar.set_postfix_str(label[:60], refresh=True)

    def done(self, label: str, result: str = "") -> None:
        """One point finished (or skipped): advance, and in a log write one line saying which and how long."""
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            if result:
                self.bar.write(f"{label}: {result}", file=self.file)
            return
        meter = tqdm.format_meter(self.n, self.total, time.monotonic() - self.t0,
                                  bar_format="{n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
        print(f"{self.desc} {meter} {label}" + (f": {result}" if result else ""), file=self.file, flush=True)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
