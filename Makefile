# pyfabric: the two commands are `make demo` and `make test`; both set everything up first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
PYTEST    := $(PY) -m pytest
ERLANG_PACKAGES := erlang-nox erlang-dev rebar3
# Long random runs (hypothesis, fuzz) are scaled by this; CI keeps the default.
FUZZ_SECONDS ?= 20
# `make fuzz`: the long run of every fuzz test (codec, C against Python codec backend, core,
# live Python server, Erlang peer), and the whole Python suite with the pure-Python codec.
FUZZ_LONG_SECONDS ?= 600
FUZZ_EXAMPLES ?= 3000

.PHONY: help setup python-env erlang peer test lint docs unit peer-test peer-check interop fuzz demo demo-cluster bench bench-codec bench-instr clean

help:
	@echo "make demo   - set up and run a Python client against an Erlang fabric server"
	@echo "make test   - set up and run every test suite (Python, Erlang, interop)"
	@echo "make demo-cluster - three clustered erlang_peer servers, a Python and an erlang_peer client, a failover"
	@echo "make lint, make docs, make interop, make fuzz, make bench, make bench-codec, make bench-instr, make setup, make clean"

setup: python-env erlang

python-env: $(STAMP)

# The C backend is compiled by this install (in place: the install is editable), so a
# change to its source (every .c and .h of it) reinstalls.
ETF_C_SOURCES := $(wildcard pyfabric/etf/_speedups*.c pyfabric/etf/_speedups*.h)
$(STAMP): pyproject.toml $(ETF_C_SOURCES)
	@if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
	  echo "pyfabric needs Python >= 3.11 as python3"; exit 1; fi
	@if [ ! -x $(PY) ]; then \
	  python3 -m venv $(VENV) || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv && python3 -m venv $(VENV); \
	    else echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; fi; }; \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=compat -e '.[test,fast,bench,lint,docs]'
	@touch $(STAMP)

erlang:
	@if command -v erl >/dev/null && command -v rebar3 >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Erlang/OTP from Debian: $(ERLANG_PACKAGES)"; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(ERLANG_PACKAGES); \
	else \
	  echo "Erlang/OTP is missing. Install it as root with:"; \
	  echo "    apt-get update && apt-get install -y $(ERLANG_PACKAGES)"; \
	  exit 1; \
	fi

# The shipped application, then the test-support modules (the interop harness
# fabric_peer_cli and the demo fabric_peer_demo, erlang_peer/test_support/: never part of
# the app) into their own ebin, erlang_peer/_build/test_support/ebin.
SUPPORT_EBIN := erlang_peer/_build/test_support/ebin
peer: erlang
	cd erlang_peer && rebar3 compile
	mkdir -p $(SUPPORT_EBIN)
	erlc -o $(SUPPORT_EBIN) -pa erlang_peer/_build/default/lib/fabric_peer/ebin erlang_peer/test_support/*.erl

# `make lint`: mypy --strict on the package (settings in pyproject.toml) and ruff on all the
# Python code; `make test` runs it first.
lint: python-env
	$(PY) -m mypy
	$(PY) -m ruff check .

# `make docs`: the API reference from the docstrings, in build/docs/ (offline; warnings fail).
docs: python-env
	$(PY) -m sphinx -W -q -b html docs/api build/docs
	@echo "API reference: build/docs/index.html"

# The Python tests with the C codec backend (PYFABRIC_ETF=c: a missing extension fails
# here), then the codec, framing and protocol tests once more with the pure-Python
# backend (docs/terms.md, "Backends"; the differential tests, which compare the two, run in
# the first pass); `make fuzz` runs the whole suite with the pure one.
unit: python-env
	PYFABRIC_ETF=c $(PYTEST) tests
	PYFABRIC_ETF=python $(PYTEST) tests/etf tests/protocol -q --ignore=tests/etf/test_etf_differential_fuzz.py

peer-test: peer-check
	cd erlang_peer && rebar3 eunit && rebar3 ct

# xref, dialyzer and edoc of the shipped application, each must be clean (exit 0).
# Dialyzer's PLT of OTP is built once (~45 s on a fresh machine) and cached by rebar3 in
# ~/.cache/rebar3 and erlang_peer/_build (ignored by git); later runs take seconds.
peer-check: erlang
	cd erlang_peer && rebar3 xref && rebar3 dialyzer && rebar3 edoc

interop: setup peer
	$(PYTEST) interop_tests

fuzz: setup peer
	FUZZ_SECONDS=$(FUZZ_LONG_SECONDS) PYFABRIC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
	  $(PYTEST) tests interop_tests -k fuzz -o timeout=0 -q
	PYFABRIC_ETF=python $(PYTEST) tests -q --ignore=tests/etf/test_etf_differential_fuzz.py
	cd erlang_peer && FUZZ_SECONDS=$(FUZZ_LONG_SECONDS) rebar3 ct --suite=fabric_peer/test/fabric_peer_acks_SUITE \
	  --case=chaos_both_directions_exactly_once_in_order

test: setup
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) peer-test
	$(MAKE) interop

demo: setup peer
	$(PY) -m pyfabric.demo

# `make demo-cluster`: three -sname erl nodes on 127.0.0.1 (a generated cookie, a private
# epmd), one clustered erlang_peer server each; demos/cluster_demo.py (docs/cluster.md).
demo-cluster: setup peer
	$(PY) demos/cluster_demo.py

bench-codec: setup
	$(PY) bench/codec_bench.py

# `make bench-instr`: instructions per message of the Python protocol core, acks+credit on and
# off, counted by callgrind (repeatable whatever the machine's speed does; needs valgrind).
bench-instr: setup
	@command -v valgrind >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get install -y -q valgrind; else echo "valgrind is missing: apt-get install valgrind (as root)"; exit 1; fi; }
	$(PY) bench/instructions.py

# `make bench`: codec, messaging, scale and route benchmarks (pyfabric, erlang_peer, Erlang, the raw
# gen_tcp/asyncio ceilings) in one run, pairings interleaved; tables and the in-run ratios with
# the goals of issue 15 on stdout, JSON and a PNG chart in bench/results/. BENCH_ARGS="--quick"
# or "--only messaging" or "--pin none" (CPU placement, see bench/measure.py). ORIG_EBIN=dir (the original implementation's compiled beams, never in
# this repository) adds the original's pairing; without it the run says it was skipped.
BENCH_ARGS ?=
ORIG_EBIN ?=
bench: setup peer
	$(PY) bench/run.py $(if $(ORIG_EBIN),--orig-ebin '$(ORIG_EBIN)') $(BENCH_ARGS)

clean:
	rm -rf $(VENV) erlang_peer/_build .pytest_cache .hypothesis
