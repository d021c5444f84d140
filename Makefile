# genq from a fresh machine. Every target sets up what it needs, and skips what is already done.
#
#   make demo    the main job: start genq, train a GAN on Fashion-MNIST, generate a batch, download it
#   make test    the test suite (starts Postgres and Redis when they are down)
#   make up      run genq on this machine (embedded: SQLite, local files, built-in broker)
#   make lint    ruff
#   make bench   the service benchmarks (queue overhead, API throughput): see BENCHMARKS.md

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
# The install is redone when pyproject.toml or constraints.txt change.
STAMP := $(VENV)/.genq-installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
BENCH_MODULES ?= bench.queue_latency bench.api_throughput

.PHONY: help setup dataset services browser demo test lint up bench clean

help:
	@sed -n '3,8p' Makefile | sed 's/^# *//'

# apt-get update only when the package is not known yet (a fresh machine's empty package lists).
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
apt_install = $(APT_GET) install -y -q $(1) || { $(APT_GET) update -q && $(APT_GET) install -y -q $(1); }

dataset:
	@if [ ! -f "$(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz" ]; then \
		echo "installing Fashion-MNIST (dataset-fashion-mnist)"; \
		$(call apt_install,dataset-fashion-mnist); \
	fi

# constraints.txt pins torch==2.13.0: any other torch spec would download CUDA builds.
$(STAMP): pyproject.toml constraints.txt
	@if [ ! -x "$(PY)" ]; then \
		$(PYTHON) -m venv $(VENV) || { $(call apt_install,python3-venv); $(PYTHON) -m venv $(VENV); }; \
	fi
	$(PY) -m pip install --quiet -c constraints.txt -e ".[api,worker,dev,bench]"
	rm -f $(VENV)/.genq-installed-*
	touch $@

setup: dataset $(STAMP)

services:
	bash .ci/services

demo: setup
	$(VENV)/bin/genq demo

up: setup
	$(VENV)/bin/genq up

# The dashboard's browser test drives Debian's chromium through Playwright (installed with the dev extra).
browser:
	@command -v chromium >/dev/null 2>&1 || $(call apt_install,chromium)

test: setup services browser
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: setup services
	for module in $(BENCH_MODULES); do $(PY) -m $$module; done

clean:
	rm -rf genq-out .pytest_cache .ruff_cache
