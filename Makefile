# timmx developer targets. `make test` runs everything, isolated (Docker) tests included.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision must be a matching pair; CPU builds come from the PyTorch CPU index when
# it answers (probed as .ci/run does), else from PyPI. TORCH_INDEX_URL= (empty) skips the probe.
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?= probe

.PHONY: setup test test-fast test-isolated lint format base-image images bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=25.1"
	@index='$(TORCH_INDEX_URL)'; \
	if [ "$$index" = probe ]; then \
		if curl -sf --max-time 10 -o /dev/null $(TORCH_CPU_INDEX)/torch/; then \
			index=$(TORCH_CPU_INDEX); \
		else \
			index=; echo "the PyTorch CPU index is out of reach: torch and torchvision from PyPI"; \
		fi; \
	fi; \
	echo "pip install torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)$${index:+ (index $$index)}"; \
	$(BIN)/pip install -q $${index:+--extra-index-url $$index} \
		torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(BIN)/pip install -q -e ".[all,ray]" --group dev
	touch $@

# Everything: in-process exports, then the Docker engine and images for the isolated tests.
test: setup
	PYTHON=$(BIN)/python bash scripts/docker-setup.sh
	TESTCONTAINERS_RYUK_DISABLED=true $(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not isolated"

test-isolated: setup
	PYTHON=$(BIN)/python bash scripts/docker-setup.sh
	TESTCONTAINERS_RYUK_DISABLED=true $(BIN)/python -m pytest -m isolated

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

base-image: setup
	$(BIN)/timmx images base --ca-bundle $${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

images: setup
	$(BIN)/timmx images build

bench: setup
	$(BIN)/python benchmarks/cli.py
	$(BIN)/python benchmarks/isolated.py
	$(BIN)/python benchmarks/quantized.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
