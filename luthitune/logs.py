"""Console and logging set-up shared by the CLI and the UI."""

from __future__ import annotations

import logging
import os
import warnings

from rich.console import Console
from rich.logging import RichHandler

console = Console()
err_console = Console(stderr=True)


def quiet_libraries() -> None:
    """Keep third-party progress bars and advisory warnings out of the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
