# make demo: install into .venv and train + evaluate DIN on MovieLens-100K (report in runs/demo/)
# make test: install into .venv (with test extras) and run the test suite; as root on Debian/Ubuntu it
#            also installs redis-server (the cache-store tests start one; they are skipped without it)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench install clean redis-server

$(VENV)/.stamp-core: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e ".[report,serve]"
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-core
	$(PIP) install -e ".[dev,report]"
	touch $@

install: $(VENV)/.stamp-core

demo: $(VENV)/.stamp-core
	$(PY) -m seqctr demo

# best effort: never fails the build (without it the Redis store tests skip, saying why)
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q redis-server >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; }; }; } || \
	  echo "note: redis-server not installed; the cache-store tests will be skipped"

test: $(VENV)/.stamp-dev redis-server
	$(PY) -m pytest

bench: $(VENV)/.stamp-core
	$(PY) bench/bench_din.py

clean:
	rm -rf $(VENV) runs
