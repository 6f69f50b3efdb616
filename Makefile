# Two commands set everything up on a fresh machine: `make run` (the app) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench browser demo clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch; on a GPU host `pip install -r requirements.txt` brings the CUDA one.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

## The app on http://127.0.0.1:7860 (microsoft/biogpt when reachable or cached, else the bundled demo models).
run: $(STAMP)
	$(PY) app.py $(ARGS)

## Headless Chromium for the browser tests (Debian package; needs root or sudo).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

## The whole test suite, in a fresh virtualenv if needed.
test: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

## Benchmarks against transformers on the same weights (never part of `make test`).
bench: $(STAMP)
	$(PY) -m bench.run $(ARGS)

## Rebuild the bundled demo models in assets/models/.
demo: $(STAMP)
	$(PY) -m biogpt.demo build

clean:
	rm -rf $(VENV) .pytest_cache
