# `make test` and `make demo` work on a fresh machine: both depend on `setup`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.seqattn-setup
TORCH   := torch==2.13.0
TORCHREC:= torchrec==1.8.0
# A CUDA host gets the CUDA fbgemm-gpu; a CPU host must never get it (see docs/architecture.md, "The engine").
FBGEMM  := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo fbgemm-gpu==1.8.0 || echo fbgemm-gpu-cpu==1.8.0)

.PHONY: setup test test-fast demo bench bench-quick clean browser screenshots feast-env

# Feast, for the Feast export's round trip (tests/pipelines/test_export_feast.py, docs/export.md), in
# a venv of its own: its pins (pandas, among others) clash with ours. The test also creates it on demand.
FEAST_VENV ?= .venv-feast
FEAST      := feast==0.67.0
FEAST_STAMP:= $(FEAST_VENV)/.seqattn-feast

setup: $(STAMP) browser

# Debian's headless Chromium for the dashboard's browser tests (Playwright drives it; it never
# downloads a browser). Skipped when present. Without apt-get it only warns here: the browser
# tests then fail in CI (CI=true) and skip elsewhere.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver (apt-get)"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) >/dev/null \
	    || echo "warning: could not install chromium: the dashboard's browser tests will fail in CI"; \
	else echo "warning: no apt-get: install chromium for the dashboard's browser tests"; fi

# Re-runs only when the dependency declarations change, so a second `make setup` is instant.
$(STAMP): pyproject.toml deploy/constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH) $(FBGEMM)
	$(PIP) install -q --disable-pip-version-check --no-deps $(TORCHREC)
	$(PIP) install -q --disable-pip-version-check -c deploy/constraints.txt -e '.[dev,bench]'
	$(PY) -c "import torch, torchrec, fbgemm_gpu, ray, sklearn; print('seqattn setup ok: torch', torch.__version__, 'torchrec', torchrec.__version__ if hasattr(torchrec, '__version__') else '1.8.0')"
	touch $@

test: setup feast-env
	$(PY) -m pytest -q tests

feast-env: $(FEAST_STAMP)

$(FEAST_STAMP): Makefile
	test -x $(FEAST_VENV)/bin/python || $(PYTHON) -m venv $(FEAST_VENV)
	$(FEAST_VENV)/bin/pip install -q --disable-pip-version-check $(FEAST)
	$(FEAST_VENV)/bin/feast version
	touch $@

# The dashboard images in docs/dashboard.md, taken by the browser tests against a live server with real jobs.
screenshots: setup
	SEQATTN_SCREENSHOTS=docs/img $(PY) -m pytest -q tests/services/test_dashboard_browser.py

demo: setup
	$(VENV)/bin/seqattn demo

# BENCH_ARGS passes options on, e.g. BENCH_ARGS="--sections g" or "--out /tmp/report.md" (CI).
bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: setup
	$(PY) -m bench.run --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(FEAST_VENV) .seqattn
