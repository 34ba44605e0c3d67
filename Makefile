# Two commands do everything on a fresh machine:
#   make demo   - create .venv, install, run the whole pipeline on ../shared/data/cub100
#   make test   - create .venv, install, run the static checks (ruff, mypy) and the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
# The browser test drives Debian's chromium (Playwright's own browser download is not used).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install chromium test demo bench-quality bench-speed clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is installed first, from this machine's disk (a CUDA build that also runs on CPU);
	# the project's own range then installs nothing more.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

chromium:
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

test: $(STAMP) chromium
	$(PY) -m ruff check src tests bench scripts
	$(PY) -m ruff format --check src tests bench scripts
	$(PY) -m mypy
	$(PY) -m pytest

demo: $(STAMP)
	SHARED=$(SHARED) PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo.sh

# The quality table of the README: every row, 3 seeds, roughly 8 hours on 2 CPU cores (+10 minutes the
# first time for boxes); resumable. One row: python bench/quality.py --row NAME.
bench-quality: $(STAMP)
	SHARED=$(SHARED) $(PY) bench/quality.py

# Speed and memory rows of docs/speed.md (about 15 minutes on 2 CPU cores; --quick: 5).
bench-speed: $(STAMP)
	$(PY) bench/speed.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
