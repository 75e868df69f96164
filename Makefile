# ctnode: `make run` starts the node with its defaults, `make test` runs the tests.
# Both set up everything they need first (Debian packages when run as root, a virtualenv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
APT_PACKAGES := python3-venv dcmtk dicom3tools orthanc chromium
# CT-CLIP (the `neural` extra) needs torch; the tests use the CPU build.
TORCH ?= torch==2.13.0

.PHONY: run test test-all lint tools bench fuzz clean

run: $(STAMP)
	$(BIN)/ctnode serve $(ARGS)

test: $(STAMP) tools
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# The upper layer's fuzz tests with many more examples than `make test` runs: 10,000 a
# test, or CTNODE_FUZZ_EXAMPLES (some ten minutes on an idle machine).
fuzz: $(STAMP)
	CTNODE_FUZZ=1 $(BIN)/pytest tests/test_upper_layer_fuzz.py --timeout=0 $(PYTEST_ARGS)

bench: $(STAMP) tools
	$(BIN)/python benchmarks/ingest.py --bare

# DCMTK (storescu/storescp, dsrdump) and dicom3tools (dciodvfy) are real peers and
# validators in the tests; install them when we can, otherwise those tests skip with a reason.
tools:
	@missing=""; for t in storescu storescp dciodvfy Orthanc chromium; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else echo "note: install $(APT_PACKAGES) (apt) for the DCMTK/dciodvfy tests"; fi; \
	fi

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q '$(TORCH)' || echo "note: $(TORCH) not installed: the CT-CLIP tests will skip"
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
