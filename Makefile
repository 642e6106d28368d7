# Two commands from a fresh clone: `make demo` and `make test`.
# Both install what is missing into .venv first; a second run only re-installs
# when pyproject.toml or this Makefile changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench loadtest-deps browser-deps clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip 'setuptools<82' wheel
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@# face_recognition declares a dependency on dlib's source distribution (an
	@# 8-minute compile); dlib-bin provides the same module prebuilt.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps 'face_recognition==1.3.0'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/portcullis demo

test: $(STAMP) browser-deps
	$(PY) -m pytest -q

# The console's browser tests drive Debian's Chromium (Playwright for Python comes with .[dev]).
# Installed once; a second run finds it and does nothing. Without root (or apt) the browser tests
# say why they skip (REQUIRE_BROWSER=1, as in CI, makes that a failure).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium and chromium-driver for the console's browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null; \
	  else \
	    echo "chromium is not installed (as root: apt-get install chromium chromium-driver): the console's browser tests will be skipped"; \
	  fi; }

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway audit demo_backend tests loadtests $(wildcard biometrics)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# locust monkey-patches sockets: it gets its own venv and never enters the gateway's process.
.venv-load/.installed:
	$(PYTHON) -m venv .venv-load
	.venv-load/bin/pip install -q --disable-pip-version-check 'locust>=2.30,<3' 'cryptography>=44' 'gmssl-pyx==2.1.0'
	@touch $@

loadtest-deps: .venv-load/.installed

bench: $(STAMP)
	$(VENV)/bin/portcullis bench

clean:
	rm -rf $(VENV) .venv-load var .pytest_cache .mypy_cache
