# Every target works on a fresh machine: the venv and its packages are made on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hfaug-installed
# Tests never reach the Hub; the local servers they start live on 127.0.0.1.
TEST_ENV := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_XET=1 TOKENIZERS_PARALLELISM=false

.PHONY: install demo test bench bench-scale lint docs clean chromium

install: $(STAMP)

# torch first and pinned: anything else pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

# Debian's chromium for the browser test (Playwright drives it by executable path), with Noto
# fonts so Devanagari and Arabic-script text renders in the screenshots.
chromium:
	@command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -q NotoSansDevanagari || { \
	  echo "installing Debian's chromium and Noto fonts for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-core >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"; }

demo: $(STAMP)
	$(BIN)/hfaug run demo

.PHONY: demo-nli
demo-nli: $(STAMP)
	$(BIN)/hfaug run demo-nli

test: $(STAMP) chromium
	$(TEST_ENV) $(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(TEST_ENV) $(BIN)/python scripts/bench/run_all.py

# the whole flow at 10,000 / 50,000 / 200,000 generations (hours on 2 cores); BENCHMARKS.md gets the table
bench-scale: $(STAMP)
	$(TEST_ENV) $(BIN)/python scripts/bench/bench_scale.py --compare

docs: $(STAMP)
	$(BIN)/hfaug recipes --reference > docs/recipes.md

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check hfaug tests scripts spaces

clean:
	rm -rf runs .pytest_cache build *.egg-info
