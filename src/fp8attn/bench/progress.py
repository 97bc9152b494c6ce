"""Progress and logging during a sweep: rich if importable, else tqdm, else plain prints."""

from __future__ import annotations

import importlib.metadata
import importlib.util


class Reporter:
    """Plain progress: one line per step."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def step(self, description: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {description}", flush=True)

    def log(self, message: str) -> None:
        print(message, flush=True)


class RichReporter(Reporter):
    def __enter__(self) -> Reporter:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn())
        self.progress.__enter__()
        self.task = self.progress.add_task("bench", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def step(self, description: str) -> None:
        self.progress.update(self.task, advance=1, description=description)

    def log(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False)


class TqdmReporter(Reporter):
    def __enter__(self) -> Reporter:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def step(self, description: str) -> None:
        self.bar.set_description(description)
        self.bar.update(1)

    def log(self, message: str) -> None:
        self.bar.write(message)


def make_reporter(total: int) -> Reporter:
    for module, cls in (("rich", RichReporter), ("tqdm", TqdmReporter)):
        if importlib.util.find_spec(module) is not None:
            return cls(total)
    return Reporter(total)
