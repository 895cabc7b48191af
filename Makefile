# Two commands matter: `make test` and `make demo`. Both set up .venv first if needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

# Re-install only when requirements.txt changes.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: setup
	$(PY) -m pytest -q tests

# The default CASA model on every task, sized to take about five minutes on a 2-core laptop CPU.
DEMO_ARGS ?= --max_iters=300 --eval_interval=150 --eval_per_task=64
DEMO_QUESTION ?= how many shapes are there?
demo: setup
	$(PY) train.py --out_dir=out-demo $(DEMO_ARGS)
	@echo "image:    out-demo/scene.png (a scene it has never seen)"
	@echo "question: $(DEMO_QUESTION)"
	@printf "answer:   "
	@$(PY) sample.py --ckpt=out-demo/ckpt.pt --scene=20261124 --save=out-demo/scene.png --prompt="$(DEMO_QUESTION)"

clean:
	rm -rf $(VENV) out-demo .pytest_cache
