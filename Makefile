# Two commands do everything on a fresh machine:
#   make demo   installs, then runs the nightly flow + Dice audit on bundled demo studies (embedded: no server, no GPU, no network)
#   make test   installs, then runs the whole test suite (real weights, real Orthanc, real Prefect server/worker, real dciodvfy)
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test bench clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh

demo: install
	$(VENV)/bin/sam2rad demo

test: install
	OMP_NUM_THREADS=2 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180 \
	  $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_nightly.py

clean:
	rm -rf $(VENV) demo-output runs .pytest_cache
