# The two commands a fresh machine needs: `make serve` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 3000
# An OPTIC_MODEL_REPOSITORY in the environment wins over the committed demo models.
OPTIC_MODEL_REPOSITORY ?= models
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
# Every install comes from uv.lock: the versions the tests passed with (uv lock refreshes it).
SYNC := UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync --frozen --inexact --python $(BIN)/python --quiet

.PHONY: serve test test-unit test-integration lint bench bench-soak bench-v2 bench-eval demo-models clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "uv==$(UV_VERSION)"

# Serving only: no torch.
$(VENV)/.serve: uv.lock pyproject.toml | $(BIN)/uv
	$(SYNC)
	touch $@

# Everything: training (torch, torchvision, onnx) and the test and lint tools.
$(VENV)/.dev: uv.lock pyproject.toml | $(BIN)/uv
	$(SYNC) --extra train --extra dev
	touch $@ $(VENV)/.serve

serve: $(VENV)/.serve
	$(BIN)/optic serve --host $(HOST) --port $(PORT) --repository $(OPTIC_MODEL_REPOSITORY)

test: $(VENV)/.dev
	$(BIN)/python -m pytest -m "not container"

test-unit: $(VENV)/.dev
	$(BIN)/python -m pytest -m "not integration and not container"

test-integration: $(VENV)/.dev
	$(BIN)/python -m pytest -m integration

lint: $(VENV)/.dev
	$(BIN)/ruff check dataformats service training tests bench deploy
	$(BIN)/mypy
	$(BIN)/hadolint --failure-threshold warning Dockerfile

# Needs wrk (apt-get install -y wrk). bench-soak: 10 minutes at 70 % of the measured capacity.
bench: $(VENV)/.dev
	$(BIN)/python -m bench.run

bench-soak: $(VENV)/.dev
	$(BIN)/python -m bench.soak

# The KServe v2 tensor path (HTTP binary extension and gRPC) against raw ONNX Runtime on the same uint8 batches.
bench-v2: $(VENV)/.dev
	$(BIN)/python -m bench.v2

# Evaluation jobs on the server against `optic eval` offline: 20,000 + 2,000 generated images (cached in ~/.cache).
bench-eval: $(VENV)/.dev
	$(BIN)/python -m bench.evaluation

# Rebuilds the committed demo models from package-shipped data (see README: "Demo models").
demo-models: $(VENV)/.dev
	$(BIN)/python -m training.recipes --repository $(or $(REPOSITORY),models)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

# The serving image, built and run with podman from a locally bootstrapped Debian base (no registry).
# Installs podman, buildah, runc and debootstrap with apt when missing (root); the base is made once.
.PHONY: container-test
container-test: $(VENV)/.dev
	bash deploy/container/prepare.sh
	$(BIN)/python -m pytest -m container tests/test_container.py
