from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Never reach a hub from tests; share one dequantized copy of the embedded model across workspaces.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("LUTHITUNE_BASE_CACHE", str(ROOT / "models" / "base"))
os.environ.pop("LUTHITUNE_HOME", None)
# Under pytest-xdist (`make test` runs two workers), each worker's torch gets its share of the CPUs: two workers
# with every CPU each would fight over them (a decode step several times slower). Subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("LUTHITUNE_THREADS", str(max(1, _cpus // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def workspace(tmp_path: Path):
    from luthitune.workspace import init_workspace

    ws, _ = init_workspace(tmp_path / "ws")
    return ws


@pytest.fixture
def store(tmp_path: Path):
    from luthitune.store import Store

    s = Store(tmp_path / "db" / "luthitune.db")
    yield s
    s.close()


@pytest.fixture
def fake_llm():
    from fakes import FakeChatModel

    return FakeChatModel()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Seconds each slow test file takes on one CPU thread (`make test` prints the slowest tests): the order files are
# handed to the workers in (longest_first). A file not listed counts one second per test.
FILE_SECONDS = {
    "tests/integration/test_demo.py": 1060,
    "tests/integration/test_crash_resume.py": 340,
    "tests/integration/test_ui_browser.py": 120,
    "tests/integration/test_training.py": 110,
    "tests/integration/test_training_multiprocess.py": 100,
    "tests/integration/test_precision.py": 65,
    "tests/integration/test_sigint.py": 55,
    "tests/integration/test_bench_outcome.py": 40,
    "tests/integration/test_cycles.py": 40,
    "tests/integration/test_cancel_local.py": 40,
    "tests/integration/test_local_backend.py": 40,
    "tests/integration/test_export.py": 30,
    "tests/integration/test_practice.py": 25,
    "tests/integration/test_studio_server.py": 25,
    "tests/integration/test_postgres.py": 25,
    "tests/integration/test_ollama_store.py": 10,
}


def longest_first(items: list, seconds: dict[str, float], workers: int = 1) -> list:
    """``items`` with whole files in order of their expected time, longest first (a file's own tests keep their
    order). ``make test`` runs pytest-xdist's ``--dist loadfile --no-loadscope-reorder``: each worker takes the next
    whole file when it runs low, so the longest files start first and the quick ones fill in at the end, and no
    file's module fixture is built twice, as it is when a work-stealing schedule splits a file between workers.

    loadfile gives each worker a second file at once, queued behind its first, and more while it has at most two
    tests pending: so the files after the first ``workers`` are quick ones of three tests or more, and the next slow
    file goes to whichever worker is free first, not behind the longest."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    order = sorted(files, key=lambda f: -seconds.get(f, len(files[f])))  # stable: ties keep collection order
    if workers > 1:
        quick = [f for f in reversed(order) if f not in seconds and len(files[f]) >= 3][:workers]
        if len(quick) == workers:
            rest = [f for f in order if f not in quick]
            order = rest[:workers] + quick + rest[workers:]
    return [i for f in order for i in files[f]]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # on each worker, the same order
        items[:] = longest_first(items, FILE_SECONDS, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1))


@pytest.fixture(autouse=True)
def _console_width():
    """A test may widen the shared rich console for its tables; the next test (in any order, on any worker) starts
    from the same width."""
    from luthitune.logs import console

    width = console._width
    yield
    console._width = width
