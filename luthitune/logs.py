"""Console and logging set-up shared by the CLI and the UI."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

from rich.console import Console
from rich.logging import RichHandler


class Terminal(Console):
    """A console whose every string (printed, or inside a panel or a table) passes through ``rewrite`` first: the
    CLI sets it so that each command a message suggests names the workspace it is run on."""

    rewrite: Callable[[str], str] | None = None

    def render_str(self, text: str, **kwargs):
        return super().render_str(self.rewrite(text) if self.rewrite else text, **kwargs)


console = Terminal()
err_console = Terminal(stderr=True)


def quiet_libraries() -> None:
    """Keep third-party progress bars and advisory warnings out of the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # tqdm bars that libraries draw unconditionally (transformers' GGUF dequantization): our own rich
    # progress shows long steps. tqdm reads this when it is first imported, which is after this call.
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # transformers reads TRANSFORMERS_VERBOSITY when it is first imported; importing it here would
    # cost a second on commands (doctor, --help) that never load a model.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_transformers() -> None:
    """Called where a model is loaded: hide transformers' tqdm bars (GGUF conversion, shard loading)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RunProgress:
    """Live view of a protocol run: a spinner naming the current step, and a bar per long step.

    Pass :meth:`update` as ``on_update`` and :meth:`progress` as ``on_progress`` to ``Protocol.advance``.
    Node results are printed above the live area as they finish.
    """

    METRICS = ("loss", "margin", "acc")

    def __init__(self, title: str, on_update=None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bars = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.title = title
        self.tasks: dict[str, int] = {}
        self.on_update = on_update
        self.spinner = None

    def __enter__(self) -> RunProgress:
        self.bars.start()
        self.spinner = self.bars.add_task(self.title, total=None, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.bars.remove_task(self.spinner)
        self.bars.stop()

    def update(self, node: str, update: dict) -> None:
        if self.on_update:
            self.on_update(node, update)
        self.bars.update(self.spinner, description=f"{self.title} (after {node})")

    def progress(self, event: dict) -> None:
        name = event["task"]
        info = "  ".join(f"{k} {event[k]:.3f}" for k in self.METRICS if isinstance(event.get(k), int | float))
        if name not in self.tasks:
            self.tasks[name] = self.bars.add_task(name, total=event.get("total") or None, info=info)
        self.bars.update(self.tasks[name], completed=event.get("done", 0), total=event.get("total") or None, info=info)
