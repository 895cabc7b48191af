# Two commands matter: `make test` and `make demo`. Both set up .venv first if needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup test demo tasks paper grade gpu clean

setup: $(VENV)/.installed

# Re-install only when requirements.txt changes.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: setup
	$(PY) -m pytest -q tests

# The demo, staged: the vision encoder alone first (pretrain_vision.py), then the default CASA model on it (the
# encoder trains on at --pretrained_lr), on the four coarse tasks (colour, shape, count, position); sized to train
# in about five minutes on a 2-core laptop CPU (README: Accuracy).
DEMO_VISION_ARGS ?= --max_iters=800 --eval_interval=400 --text_share=0
DEMO_ARGS ?= --tasks=color,shape,count,position --max_iters=600 --eval_interval=300 --eval_per_task=64 \
            --warmup_iters=50 --lr=6e-3
DEMO_QUESTION ?= how many shapes are there?
demo: setup
	$(PY) pretrain_vision.py --out_dir=out-demo/vision $(DEMO_VISION_ARGS)
	$(PY) train.py --init_from=out-demo/vision/ckpt.pt --out_dir=out-demo $(DEMO_ARGS)
	@echo "image:    out-demo/scene.png (a scene it has never seen)"
	@echo "question: $(DEMO_QUESTION)"
	@printf "answer:   "
	@$(PY) sample.py --ckpt=out-demo/ckpt.pt --scene=20261124 --save=out-demo/scene.png --prompt="$(DEMO_QUESTION)"

# Every task, staged (README: "Every task, one staged recipe"): the encoder (3200 iterations in the varied look, half
# its scenes with text), then insertion, cross and CASA from it on the eight question tasks and 8-frame live captions
# at once, 2400 iterations in the same look; each task's crossing times and final accuracy; resumes if interrupted.
# About 89 CPU-minutes of training at the quiet per-iteration rates (results/accuracy_notebook.md, "A step's rows in
# two parts by length": 60 iterations in 32.0 / 36.8 / 50.8 s): the encoder 9, cross 21, CASA 25, insertion 34;
# plus the evaluations.
TASKS_ARGS ?= --tasks=caption,color,shape,count,position,relation,reading,multi_image,video --frames=8 \
              --max_iters=2400 --eval_interval=400 --eval_per_task=64 --warmup_iters=50 --lr=6e-3 --progress=false \
              --style=varied
tasks: setup
	$(PY) experiments.py learn --out_dir=out-tasks --vision_iters=3200 --vision_args="--style=varied" --jobs=3 \
	    --train_args="$(TASKS_ARGS)" --json=results/tasks_cpu.json --png=results/tasks_cpu.png

# The paper's accuracy claims at toy scale (README: Accuracy of the three fusions), on the staged recipe of make
# tasks; resumes if interrupted, and keeps each run's record in results/paper_runs (a run with a complete record is
# not trained again; PAPER_ARGS="--out_dir=out-paper" trains every run afresh).
PAPER_ARGS ?=
paper: setup
	$(PY) experiments.py paper $(PAPER_ARGS)

# The GPU path in one command, on a machine with a CUDA GPU (README: On a GPU): the tests; the data feed (batches/s
# by workers, the loop's wait for data); training throughput; train.py's step per set of attention kernels; the
# demo recipe timed to accuracy with bf16 autocast, with Muon and with fused AdamW (not torch.compile: on an H200 it
# logged no iteration in 120 s, the shapes changing every batch; results/gpu.md). Results in results/*_gpu.*.
GPU_TRAIN_ARGS ?= $(DEMO_ARGS) --eval_interval=25
gpu: setup
	$(PY) -m pytest -q tests
	$(PY) bench.py data --device=cuda --workers=0,4,8,15 --json=results/data_gpu.json
	$(PY) bench.py train --device=cuda --json=results/train_gpu.json
	$(PY) bench.py step --device=cuda --json=results/step_gpu.json
	$(PY) experiments.py learn --fusions=casa --vision_iters=800 --out_dir=out-gpu/muon \
	    --train_args="$(GPU_TRAIN_ARGS)" --json=results/learn_gpu.json --png=results/learn_gpu.png
	$(PY) experiments.py learn --fusions=casa --vision_iters=800 --out_dir=out-gpu/adamw \
	    --train_args="$(GPU_TRAIN_ARGS) --optimizer=adamw" --json=results/learn_gpu_adamw.json

# The exercises (exercises/README.md): make grade EX=1, or every one.
EX ?= all
grade: setup
	@$(PY) exercises/grade.py --ex=$(EX)

clean:
	rm -rf $(VENV) out-demo out-tasks out-paper out-gpu .pytest_cache
