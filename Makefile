# The README's two commands: `make dashboard` and `make test`. Both set everything up
# themselves (virtual environment, packages, the synthetic data set), and are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNS_DIR ?= runs
SYNTH_DIR ?= data/synth
# The default synthetic set: EyePACS class priors, 128 px scans (see training/synth.py).
SYNTH_N ?= 3000
SYNTH_SIZE ?= 128
PORT ?= 8501

.PHONY: setup data zoo dashboard test browser clean

# Re-install only when a requirements file changes.
$(VENV)/.stamp-install: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

setup: $(VENV)/.stamp-install

$(SYNTH_DIR)/labels.csv: | setup
	$(PY) -m training.synth --out $(SYNTH_DIR) --n $(SYNTH_N) --size $(SYNTH_SIZE) --seed 0 --patients

data: $(SYNTH_DIR)/labels.csv

# The quick model zoo, trained once when no run exists yet, then every run exported to ONNX
# (fp32 + int8) unless it already has its model.onnx. An interrupted zoo continues where it stopped.
zoo: data
	@if [ -z "$$(ls $(RUNS_DIR) 2>/dev/null)" ] || [ -f $(RUNS_DIR)/.zoo-incomplete ]; then \
	  mkdir -p $(RUNS_DIR) && touch $(RUNS_DIR)/.zoo-incomplete && \
	  $(PY) -m training.zoo --data $(SYNTH_DIR) --out $(RUNS_DIR) --preset quick && rm -f $(RUNS_DIR)/.zoo-incomplete; \
	else echo "runs found in $(RUNS_DIR)/: not retraining (empty it to retrain the quick zoo)"; fi
	@for r in $(RUNS_DIR)/*/; do \
	  if [ -f "$$r/model.pt" ] && [ ! -f "$$r/model.onnx" ]; then $(PY) -m export "$$r" --quantize int8 || exit 1; fi; \
	done

dashboard: zoo
	RUNS_DIR=$(RUNS_DIR) $(VENV)/bin/streamlit run dashboard/app.py --server.port $(PORT) --server.headless true

# Debian's Chromium for the end-to-end browser test (Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo -n true 2>/dev/null && sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	       || echo "chromium not installed and no root: the browser test will be skipped"; fi; }

test: setup browser
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
