# Everything a fresh machine needs (Python 3.11 and root) is installed by `make install`,
# which every other target depends on. Re-running skips what is already there.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# chromium: tests open report.html in a real browser; postgresql: tests share an HPO study through a real server
APT_PACKAGES := ffmpeg espeak-ng chromium postgresql
# Tests and benchmarks never reach the Hub; recipes fall back to packaged models when offline.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision first, pinned, so nothing else pulls a different build.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[vision,audio,tracking,postgres,export,dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python recipes/sentiment.py --overwrite_output_dir

test: install
	$(OFFLINE) $(BIN)/python -m pytest -q --durations=15 tests

# Every recipe's smoke run and every unit test, in under 3 minutes on 2 cores: what is marked slow is left to
# `make test`.
test-fast: install
	$(OFFLINE) $(BIN)/python -m pytest -q -m "not slow" tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache  # the layers of common/ (pyproject.toml, README's Layout)

bench: install
	$(OFFLINE) $(BIN)/python bench/run.py
	$(OFFLINE) $(BIN)/python bench/data_prep.py
	$(OFFLINE) $(BIN)/python bench/fast_path.py
	$(OFFLINE) $(BIN)/python bench/attention_dropout.py
	$(OFFLINE) $(BIN)/python bench/token_classification.py
	$(OFFLINE) $(BIN)/python bench/audio_classification.py
	$(OFFLINE) $(BIN)/python bench/input_pipeline.py

clean:
	rm -rf outputs .pytest_cache
