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


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _console_width():
    """A test may widen the shared rich console for its tables; the next test (in any order, on any worker) starts
    from the same width."""
    from luthitune.logs import console

    width = console._width
    yield
    console._width = width
