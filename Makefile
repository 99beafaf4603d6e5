# dnlseg: `make train` and `make test` are all the set-up a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/synthetic/dnl.yaml
ARGS ?=
LOGDIR ?= runs
PYTEST_ARGS ?=
ABLATION_ARGS ?=
MMSEG_PACKAGES := mmsegmentation==1.2.2 mmcv-lite==2.1.0 mmengine==0.10.7
MODULE ?=
MUTATION_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install train test lint format bench bench-blocks bench-scaling bench-training bench-inference bench-data \
	bench-callbacks bench-startup bench-analysis bench-export bench-pointwise experiment-separation experiment-ablation experiment-reliability mutation mutation-check \
	tensorboard clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision at the versions on this machine's disk; any other version would download gigabytes.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev,parity,export]'
	# mmseg itself, the parity tests' reference (pyproject.toml, extra "parity": why --no-deps)
	$(BIN)/pip install --quiet --no-deps $(MMSEG_PACKAGES)
	touch $(STAMP)

install: $(STAMP) ## create .venv and install dnlseg editable with its dev, parity (mmseg reference) and export extras

train: $(STAMP) ## fit CONFIG (default configs/synthetic/dnl.yaml); ARGS="--trainer.max_steps=50" overrides
	$(BIN)/dnlseg fit -c $(CONFIG) $(ARGS)

test: $(STAMP) ## run the test suite (what CI runs)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check + format check + mypy (pyproject.toml [tool.mypy])
	$(BIN)/ruff check src tests benchmarks experiments mutation examples
	$(BIN)/ruff format --check src tests benchmarks experiments mutation examples
	$(BIN)/mypy src

format: $(STAMP) ## ruff format + autofix
	$(BIN)/ruff check --fix src tests benchmarks experiments mutation examples
	$(BIN)/ruff format src tests benchmarks experiments mutation examples

# Mutation testing (mutmut 3.x, a dev dependency) of the core modules with their fast tests; each module in its own
# work folder under .mutation/, results in mutation/results/, report in mutation/report.md (mutation/run.py).
mutation: $(STAMP) ## mutation testing of the core modules -> mutation/report.md; MODULE=src/dnlseg/models/losses.py for one
	$(BIN)/python mutation/run.py $(if $(MODULE),--module $(MODULE)) $(MUTATION_ARGS)

# CI's guard against a sliding score: one small core module from scratch (about a minute), failing below the target
# or on a survivor without a verdict.
mutation-check: $(STAMP) ## mutation score check of one small module (CI)
	$(BIN)/python mutation/run.py --module src/dnlseg/analysis/gradient_separation.py --fresh --check

# The benchmark suite. ARGS go to every model benchmark: --quick (shorter), --paper (the recipes' sizes: batch 2,
# 512x1024 crops, 1024x2048 images), --device cuda (tables then go to benchmarks/<name>_cuda.md);
# SCALING_ARGS / TRAINING_ARGS / INFERENCE_ARGS to one script each (e.g. TRAINING_ARGS="--precision bf16-mixed
# --channels-last --cudnn-benchmark --encoder resnet101 --crop 769 769"), DATA_BENCH_ARGS to the data pipeline,
# ANALYSIS_ARGS to the analysis (e.g. ANALYSIS_ARGS="--baseline-src /tmp/before/src", another checkout's sources).
bench: bench-blocks bench-pointwise bench-scaling bench-training bench-inference bench-data bench-callbacks bench-startup bench-analysis bench-export ## the benchmark suite -> benchmarks/*.md + PNGs

bench-blocks: $(STAMP) ## context blocks alone (NL, DNL, GC, mmseg's), fused vs materialised -> benchmarks/context_blocks.md
	$(BIN)/python benchmarks/context_blocks.py $(ARGS)

bench-pointwise: $(STAMP) ## 1x1 convolution: oneDNN against matrix products -> benchmarks/pointwise_conv.md
	$(BIN)/python benchmarks/pointwise_conv.py $(POINTWISE_ARGS)

bench-scaling: $(STAMP) ## block fwd+bwd time/memory for P = 1024 ... 32768 -> benchmarks/resolution_scaling.md
	$(BIN)/python benchmarks/context_blocks.py --scaling $(ARGS) $(SCALING_ARGS)

bench-training: $(STAMP) ## full training step, baseline vs NL, DNL, GC heads -> benchmarks/training_step.md
	$(BIN)/python benchmarks/training_step.py $(ARGS) $(TRAINING_ARGS)

bench-inference: $(STAMP) ## whole / slide / multi-scale+flip inference -> benchmarks/inference_modes.md
	$(BIN)/python benchmarks/inference_modes.py $(ARGS) $(INFERENCE_ARGS)

bench-data: $(STAMP) ## decode + augmentation throughput -> benchmarks/data_pipeline.md
	$(BIN)/python benchmarks/data_pipeline.py $(DATA_BENCH_ARGS)

bench-callbacks: $(STAMP) ## step-time overhead of the gradient callbacks -> benchmarks/callback_overhead.md
	$(BIN)/python benchmarks/callback_overhead.py $(CALLBACK_ARGS)

bench-startup: $(STAMP) ## start-up time of `dnlseg --help` and `fit --print_config` -> benchmarks/startup_time.md
	$(BIN)/python benchmarks/startup_time.py $(STARTUP_ARGS)

bench-analysis: $(STAMP) ## peak memory of `dnlseg analyze` at P = 16384 and 32768 -> benchmarks/analysis_memory.md
	$(BIN)/python benchmarks/analysis_memory.py $(ANALYSIS_ARGS)

bench-export: $(STAMP) ## dnlseg export per head: export time, size, onnxruntime vs PyTorch time/memory -> benchmarks/export.md
	$(BIN)/python benchmarks/export.py $(EXPORT_ARGS)

experiment-separation: $(STAMP) ## train NL and DNL, same seed -> experiments/gradient_separation/report.md
	$(BIN)/python experiments/gradient_separation/run.py $(if $(ARGS),--args "$(ARGS)")

experiment-ablation: $(STAMP) ## 6 variants x 2 synthetic settings x 3 seeds, learning curves + bootstrap CIs -> experiments/ablation/report.md
	$(BIN)/python experiments/ablation/run.py $(ABLATION_ARGS) $(if $(ARGS),--args "$(ARGS)")

experiment-reliability: $(STAMP) ## steps lost to SIGTERM/SIGKILL, DDP parity -> experiments/reliability/results.md
	$(BIN)/python experiments/reliability/measure.py

tensorboard: $(STAMP) ## serve the TensorBoard logs under LOGDIR (default runs/)
	$(BIN)/tensorboard --logdir $(LOGDIR)

clean: ## remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
