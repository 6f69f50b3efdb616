# Two commands set everything up on a fresh machine: `make run` (the app) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Where torch comes from: PyTorch's CPU wheel index on a machine without an NVIDIA GPU (the CUDA build from PyPI is
# several GB), PyPI's default build where `nvidia-smi` exists. Override with TORCH_INDEX=<url>, or TORCH_INDEX= to
# let pip pick (e.g. a machine whose pip already finds a CPU wheel locally).
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
FAIRSEQ := fairseq-fixed==0.12.3.1
# What `make test-fast` leaves out: the real browser, the soak, training runs and the other slow tests.
FAST := not browser and not soak and not training and not slow

.PHONY: run test test-fast bench browser screenshots demo requirements clean

$(STAMP): pyproject.toml requirements-dev.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[app,quantization]" -r requirements-dev.txt
	# fairseq, the reference of tests/test_fairseq.py: built against this torch (not a fresh one in an isolated
	# build environment), its dependencies from requirements-dev.txt.
	$(PY) -m pip install -q --no-deps --no-build-isolation $(FAIRSEQ)
	touch $(STAMP)

## The app on http://127.0.0.1:7860 (microsoft/biogpt when reachable or cached, else the bundled demo models).
run: $(STAMP)
	$(PY) app.py $(ARGS)

## The whole test suite, in a fresh virtualenv if needed (the browser tests need `make browser` once).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## The edit-test loop: everything but the browser, soak, training and slow tests.
test-fast: $(STAMP)
	$(PY) -m pytest -m "$(FAST)" $(PYTEST_ARGS)

## Headless Chromium for the browser tests (the Debian package; needs root or sudo).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

## Refresh the README's screenshots in docs/screenshots (look at them before committing).
screenshots: $(STAMP) browser
	SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(PY) -m pytest -q tests/test_browser.py tests/test_browser_explore.py

## Benchmarks against transformers on the same weights (never part of `make test`).
bench: $(STAMP)
	$(PY) -m bench.run $(ARGS)
	$(PY) -m bench.annotate

## Rebuild the bundled demo models in biogpt/demo_models/.
demo: $(STAMP)
	$(PY) -m tools.demo build

## Regenerate requirements.txt from pyproject.toml, and the README's configuration table from biogpt/settings.py.
requirements: $(STAMP)
	$(PY) -m tools.requirements
	$(PY) -m tools.readme

clean:
	rm -rf $(VENV) .pytest_cache
