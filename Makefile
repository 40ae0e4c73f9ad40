# Two commands on a fresh machine: `make run` (the main job) and `make test`.
# Both create or refresh the virtual environment at .venv/ first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
SHARED  ?= ../shared
STAMP   := $(VENV)/.installed

.PHONY: venv run test lint format bench docs clean

$(STAMP): pyproject.toml requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# The main job: the resolution sweep of the shared CIFAR-10 ResNet-56 on the CIFAR-10 JPEG copy.
run: $(STAMP)
	$(BIN)/reswise sweep --model cifar_resnet56 --pretrained --dataset imagefolder \
		--data-root $(SHARED)/datasets/cifar10-jpeg/test --resolutions 32,28,24,20,16,12 \
		--out runs/cifar_resnet56_cifar10-jpeg

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks training
	$(BIN)/ruff format --check src tests benchmarks training

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks training
	$(BIN)/ruff check --fix src tests benchmarks training

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sweep.py

# The documentation site (docs/, mkdocs.yml) into site/; strict: a broken link or image fails.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
