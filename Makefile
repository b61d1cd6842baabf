# One-command set-up: `make train` and `make test` create .venv and install everything first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Without a GPU, take PyTorch's CPU build: the default PyPI wheel drags in several GB of CUDA.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,--extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: install train test bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch alone from the CPU index, then everything else (torch's own needs too) from PyPI,
	# with torch pinned so nothing swaps it for another build.
	$(PY) -m pip install -q --no-deps "torch==$(TORCH_VERSION)" $(TORCH_INDEX)
	$(PY) -m pip install -q -e ".[dev,sweep,hf]" "torch==$(TORCH_VERSION)"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) train.py $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

# timm pulls torchvision, which must be the build for the installed torch: keep the torch pin and
# the same index, or pip pairs a CPU torch with a CUDA torchvision that fails on import.
bench: install
	$(PY) -m pip install -q -e ".[bench]" "torch==$(TORCH_VERSION)" $(TORCH_INDEX)
	$(PY) scripts/benchmark.py $(ARGS)

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs multirun .pytest_cache
