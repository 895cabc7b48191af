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

# The default CASA model on every task, sized to take about five minutes on a 2-core laptop CPU: first its
# vision encoder alone (pretrain_vision.py, the step real VLMs download), then the VLM on top of it.
DEMO_VISION_ARGS ?= --max_iters=400 --eval_interval=200
DEMO_ARGS ?= --max_iters=300 --eval_interval=150 --eval_per_task=64
DEMO_QUESTION ?= how many shapes are there?
demo: setup
	$(PY) pretrain_vision.py --out_dir=out-demo-vision $(DEMO_VISION_ARGS)
	$(PY) train.py --out_dir=out-demo --init_from=out-demo-vision/ckpt.pt $(DEMO_ARGS)
	@echo "image:    out-demo/scene.png (a scene it has never seen)"
	@echo "question: $(DEMO_QUESTION)"
	@printf "answer:   "
	@$(PY) sample.py --ckpt=out-demo/ckpt.pt --scene=20261124 --save=out-demo/scene.png --prompt="$(DEMO_QUESTION)"

clean:
	rm -rf $(VENV) out-demo out-demo-vision .pytest_cache
