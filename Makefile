# Everything runs inside ./.venv (Python 3.8-3.10, pinned by constraints.txt).
# GPU: SGDI_CUDA=120 make env adds nnabla-ext-cuda120 (scripts/bootstrap_env.sh).
# Each target installs what it needs first; a second run skips what is already there.
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: env data test test-slow lint demo picture bench bench-full gpu-check lock clean

env:  ## create .venv with nnabla 1.39.0 and the pinned packages (idempotent)
	@bash scripts/bootstrap_env.sh

data:  ## env + the Debian Fashion-MNIST package (demo, benchmarks, real-data tests)
	@SGDI_WITH_DATA=1 bash scripts/bootstrap_env.sh

test: data  ## the default (fast) test suite
	$(PY) -m pytest -q

test-slow: data  ## every test, including the slow oracle and end-to-end ones
	$(PY) -m pytest -q -m "slow or not slow"

lint: env
	.venv/bin/ruff check sgd_influence_plugin support plugins tests benchmarks samples experiments scripts
	.venv/bin/ruff format --check sgd_influence_plugin support plugins tests benchmarks samples experiments scripts

demo: data  ## build the Fashion-MNIST sample, train it with nnabla_cli, run the plugin
	$(PY) samples/fashion_mnist/run_demo.py

picture: demo  ## the README's picture (docs/images/demo.png) from the demo's output
	$(PY) scripts/readme_picture.py

bench: data  ## speed benchmark: sample CNN and LeNet, 3,000 images (a few minutes)
	$(PY) benchmarks/replay_speed.py

bench-full: data  ## all 60,000 Fashion-MNIST images at the defaults, timed (builds and trains once)
	$(PY) benchmarks/full_run.py

gpu-check: data  ## oracle tests + benchmark with --context cudnn (after SGDI_CUDA=120 make env)
	@bash scripts/gpu_check.sh

lock: env  ## re-pin constraints.txt from what .venv has now
	@echo "# Exact pins for .venv (Python 3.8-3.10). Regenerate: make lock" > constraints.txt
	.cache/uv-tool/bin/uv pip freeze -p $(PY) | grep -v -E '^-e|sgd-influence' >> constraints.txt

clean:
	rm -rf .venv .cache build *.egg-info .pytest_cache
