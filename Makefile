# Two commands on a fresh Debian machine (Python 3.11, no GPU):  make scan   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := redis-server postgresql chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SAMPLES := samples

.PHONY: setup system-packages scan test lint bench clean

setup: system-packages $(STAMP) $(SAMPLES)/.done

# Servers the integration tests start themselves on 127.0.0.1 (no systemd needed).
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# torch first and exactly pinned: the CPU wheel lies on disk; any other spec downloads CUDA builds.
# nvidia-pytriton only for its tritonserver binary (--no-deps: its numpy<2 pin is for its Python API, unused here).
$(STAMP): pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps nvidia-pytriton==0.7.0 comfyui-workflow-templates-media-image
	touch $@

$(SAMPLES)/.done: $(STAMP) gamma/samples.py
	$(PY) -m gamma.samples $(SAMPLES)
	touch $@

scan: setup
	$(VENV)/bin/gamma-scan $(SAMPLES)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/preprocess.py

clean:
	rm -rf $(VENV) $(SAMPLES)
