# Two commands matter: `make demo` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_DIR := tests/interop/node
EXT_SO = $(wildcard hyco_proto/_frames*.so)
WHEELHOUSE := build/wheelhouse

.PHONY: demo test lint typecheck pytest pytest-ext pytest-noext bench clean setup node chromium fuzz load docs dist

setup: .stamp-venv .stamp-ext $(WHEELHOUSE)/requirements.txt

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The package (editable) with its test extras; the extension is built separately, in place.
.stamp-venv: $(PY) pyproject.toml setup.py
	HYCO_PROTO_BUILD_EXTENSION=no $(PY) -m pip install -q -e '.[test]'
	touch $@

# Build the Cython extension in place; HYCO_PROTO_BUILD_EXTENSION=yes makes a failure an error.
.stamp-ext: .stamp-venv hyco_proto/_frames.pyx setup.py
	HYCO_PROTO_BUILD_EXTENSION=yes $(PY) setup.py -q build_ext --inplace
	HYCO_PROTO_REQUIRE_EXTENSION=1 $(PY) -c "import hyco_proto.frames as f; print('frames implementation:', f.IMPLEMENTATION)"
	touch $@

# The runtime dependencies as wheels (from pyproject.toml): tests/test_packaging.py installs our
# wheel into a fresh virtualenv from here with --no-index, so the tests need no network.
$(WHEELHOUSE)/requirements.txt: .stamp-venv pyproject.toml
	mkdir -p $(WHEELHOUSE)
	$(PY) -c "import sys; t = __import__('tomllib' if sys.version_info >= (3, 11) else 'tomli'); \
		print(*t.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
		> $(WHEELHOUSE)/requirements.in
	$(PY) -m pip download -q --only-binary=:all: -d $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.in
	mv $(WHEELHOUSE)/requirements.in $@

# The sdist and a wheel in dist/ (python -m build: the wheel is built from the sdist, in an
# isolated environment). Wheels for every platform: cibuildwheel ([tool.cibuildwheel]).
dist: .stamp-venv
	$(PY) -m build --outdir dist .

# Microsoft's Node clients (hyco-ws pins a broken `http` dependency; see tests/interop/node/README.md).
node: .stamp-node
.stamp-node: $(NODE_DIR)/package.json
	cd $(NODE_DIR) && npm install --no-audit --no-fund --loglevel=error
	touch $@

lint: .stamp-venv
	$(VENV)/bin/ruff check hyco_proto tests bench fuzz

typecheck: .stamp-venv
	$(VENV)/bin/mypy --strict hyco_proto

# Headless Chromium for the web view's browser test (tests/test_webview_browser.py): Debian's
# package, installed when missing (as root, else through `sudo -n`). The test fails without it.
APT := env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
chromium: .stamp-chromium
.stamp-chromium:
	@if [ -n "$$HYCO_CHROMIUM" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		$(APT) || { apt-get update -q && $(APT); }; \
	else \
		sudo -n $(APT) || { sudo -n apt-get update -q && sudo -n $(APT); }; \
	fi
	@[ -n "$$HYCO_CHROMIUM" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
		|| { echo "could not install chromium (apt-get install chromium, or set HYCO_CHROMIUM)"; exit 1; }
	touch $@

pytest-ext: setup node chromium
	HYCO_PROTO_REQUIRE_EXTENSION=1 $(PY) -m pytest -q -p no:cacheprovider tests

pytest-noext: setup node chromium
	HYCO_PROTO_NO_EXTENSIONS=1 $(PY) -m pytest -q -p no:cacheprovider tests

test: lint typecheck docs pytest-ext pytest-noext

demo: setup
	$(PY) -m hyco_proto.demo

# The documentation site (mkdocs.yml, pages in docs/) into site/: `mkdocs build --strict`, so a
# warning (a broken link, a docstring the API reference cannot parse) fails the build (not with
# --quiet: it hides the warnings from the strict count too).
# NO_MKDOCS_2_WARNING silences the Material theme's end-of-life notice, which is not a warning.
.stamp-docs: .stamp-venv pyproject.toml
	HYCO_PROTO_BUILD_EXTENSION=no $(PY) -m pip install -q -e '.[test,docs]'
	touch $@

docs: .stamp-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

.stamp-bench: .stamp-venv pyproject.toml
	HYCO_PROTO_BUILD_EXTENSION=no $(PY) -m pip install -q -e '.[test,bench]'
	touch $@

# socat (Debian's) for the relay benchmarks' byte-splice baseline (bench/interleaved.py),
# installed when missing like chromium above.
SOCAT_APT := env DEBIAN_FRONTEND=noninteractive apt-get install -y -q socat
.stamp-socat:
	@if command -v socat >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		$(SOCAT_APT) || { apt-get update -q && $(SOCAT_APT); }; \
	else \
		sudo -n $(SOCAT_APT) || { sudo -n apt-get update -q && sudo -n $(SOCAT_APT); }; \
	fi
	@command -v socat >/dev/null || { echo "could not install socat (apt-get install socat)"; exit 1; }
	touch $@

# Benchmarks against the peers in one run; writes bench/RESULTS.md and bench/results.png.
bench: setup .stamp-bench .stamp-socat
	mkdir -p .benchmarks
	HYCO_PROTO_REQUIRE_EXTENSION=1 $(PY) -m pytest -q -p no:cacheprovider bench \
		--benchmark-json=.benchmarks/latest.json --benchmark-columns=median,ops \
		--benchmark-min-time=0.002 --benchmark-warmup=on --benchmark-warmup-iterations=2000
	$(PY) -m bench.report .benchmarks/latest.json

# Load on ONE emulator process (issue 12; bench/load.py): PAIRS idle relayed pairs (max: 10,000,
# or as many as its open-file limit allows: 2 sockets each), CLIENTS idle Web PubSub clients,
# bursts of 1,000 rendezvous and 1,000 relayed HTTP requests, a SOAK_SECONDS soak; prints a table.
# `make bench` runs small versions (bench/test_load.py).
SOAK_SECONDS ?= 600
PAIRS ?= max
CLIENTS ?= 10000
load: setup .stamp-bench
	mkdir -p .benchmarks
	HYCO_PROTO_REQUIRE_EXTENSION=1 $(PY) -m bench.load --pairs $(PAIRS) --clients $(CLIENTS) \
		--soak $(SOAK_SECONDS) --out .benchmarks/load.md --json .benchmarks/load.json

# Every parser of untrusted input under atheris (libFuzzer), FUZZ_SECONDS each (fuzz/run.py).
FUZZ_SECONDS ?= 20
.stamp-fuzz: .stamp-venv
	$(PY) -m pip install -q 'atheris>=2.3'
	touch $@

fuzz: setup .stamp-fuzz
	$(PY) -m fuzz.run --all $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) build site .stamp-* hyco_proto/_frames*.so hyco_proto/_frames.c $(NODE_DIR)/node_modules
