# ctnode: `make run` starts the node with its defaults, `make test` runs the tests.
# Both set up everything they need first (Debian packages when run as root, a virtualenv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
APT_PACKAGES := python3-venv dcmtk dicom3tools orthanc chromium default-jre-headless libpixelmed-java nodejs openssl postgresql
# CT-CLIP (the `neural` extra) needs torch; the tests use the CPU build.
TORCH ?= torch==2.13.0

.PHONY: run test test-all lint tools ohif bench fuzz soak clean

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

# The several-hosts scenario (PostgreSQL and SQLite, 2 receivers, 2 workers, 2 senders, kills
# and restarts) with more studies than `make test` sends (20): CTNODE_SOAK_STUDIES (default 60).
soak: $(STAMP) tools
	CTNODE_SOAK_STUDIES=$${CTNODE_SOAK_STUDIES:-60} $(BIN)/pytest tests/test_several_hosts.py --timeout=0 $(PYTEST_ARGS)

bench: $(STAMP) tools
	$(BIN)/python benchmarks/ingest.py --bare

# DCMTK (storescu/storescp, dsrdump) and dicom3tools (dciodvfy) are real peers and
# validators in the tests, as are Pixelmed's SR validator (Java) and OHIF's SR extension
# (Node, npm: tests/ohif); install them when we can, otherwise those tests skip with a reason.
# npm comes with some nodejs builds (NodeSource's): Debian's npm only where it does not.
tools:
	@missing=""; for t in storescu storescp dciodvfy Orthanc chromium java node npm; do command -v $$t >/dev/null || missing=1; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing=1; \
	[ -f /usr/share/java/pixelmed.jar ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	    command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; \
	  else echo "note: install $(APT_PACKAGES) npm (apt) for the DCMTK/dciodvfy/Pixelmed/OHIF tests"; fi; \
	fi
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory ohif; fi

# OHIF's SR extension and its dependencies, exact versions from tests/ohif/package-lock.json,
# installed once per lock file (the test does the same when they are missing).
OHIF_STAMP := tests/ohif/node_modules/.ctnode-lock-sha256
ohif:
	@lock=$$(sha256sum tests/ohif/package-lock.json | cut -d' ' -f1); \
	if [ "$$(cat $(OHIF_STAMP) 2>/dev/null)" != "$$lock" ]; then \
	  (cd tests/ohif && npm ci --no-audit --no-fund --loglevel=error) && echo "$$lock" > $(OHIF_STAMP); \
	fi

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,postgres]'
	$(BIN)/pip install -q '$(TORCH)' || echo "note: $(TORCH) not installed: the CT-CLIP tests will skip"
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/ohif/node_modules
