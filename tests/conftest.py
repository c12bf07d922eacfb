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


# Seconds each slow test file takes on one CPU thread (`make test` prints the slowest tests): what the schedule below
# balances. A file not listed counts one second per test.
FILE_SECONDS = {
    "tests/integration/test_demo.py": 950,
    "tests/integration/test_crash_resume.py": 470,
    "tests/integration/test_bench_outcome.py": 400,
    "tests/integration/test_practice.py": 140,
    "tests/integration/test_ui_browser.py": 130,
    "tests/integration/test_training.py": 115,
    "tests/integration/test_training_multiprocess.py": 110,
    "tests/integration/test_precision.py": 65,
    "tests/integration/test_sigint.py": 55,
    "tests/integration/test_cycles.py": 40,
    "tests/integration/test_cancel_local.py": 40,
    "tests/integration/test_local_backend.py": 40,
    "tests/integration/test_export.py": 30,
    "tests/integration/test_studio_server.py": 25,
    "tests/integration/test_postgres.py": 25,
    "tests/integration/test_ollama_store.py": 10,
}


def balanced_order(items: list, workers: int, seconds: dict[str, float]) -> list:
    """``items`` laid out for pytest-xdist's work-stealing schedule, which hands worker k the k-th contiguous chunk
    of the collection (``len(pending) // workers_left`` items each) and steals from a queue's tail.

    The slow files go whole (their module fixtures are built once) to the worker with the least work so far,
    longest first; each worker's chunk starts with them, so the longest test starts at once instead of after
    other slow ones; the quick tests fill each chunk to its size, and are what stealing moves."""
    sizes, left = [], len(items)
    for k in range(workers):
        sizes.append(left // (workers - k))
        left -= sizes[-1]
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    lanes: list[list] = [[] for _ in range(workers)]
    load = [0.0] * workers
    slow = sorted((f for f in files if f in seconds), key=lambda f: -seconds[f])
    for f in slow:
        fits = [k for k in range(workers) if len(lanes[k]) + len(files[f]) <= sizes[k]]
        if not fits:
            continue  # split among the quick tests below
        k = min(fits, key=lambda k: load[k])
        lanes[k] += files[f]
        load[k] += seconds[f]
    placed = {id(i) for lane in lanes for i in lane}
    for item in items:
        if id(item) not in placed:
            k = min((k for k in range(workers) if len(lanes[k]) < sizes[k]), key=lambda k: load[k])
            lanes[k].append(item)
            load[k] += 1
    return [i for lane in lanes for i in lane]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1 and os.environ.get("PYTEST_XDIST_WORKER"):  # on each worker, the same order
        items[:] = balanced_order(items, workers, FILE_SECONDS)


@pytest.fixture(autouse=True)
def _console_width():
    """A test may widen the shared rich console for its tables; the next test (in any order, on any worker) starts
    from the same width."""
    from luthitune.logs import console

    width = console._width
    yield
    console._width = width
