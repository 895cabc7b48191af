"""
Exercise 7 (an experiment, with a written answer): does the model read the images?

Read first: train.py, `evaluate` and the blind baseline in `main` (every image replaced by one gray image);
README "Accuracy".
Grade:      make grade EX=7

Train a small model, e.g. the demo (make demo, about five minutes), or in two minutes:
    python train.py --tasks=color,shape,count,position --max_iters=200 --eval_interval=100 --out_dir=out-ex7
Its eval.json holds accuracy (real images) and blind_accuracy (gray images) per task. The blind baseline is what
the text alone gives: the questions' priors. The question it settles: is an accuracy evidence of seeing?

Fill in answers(): the numbers from your eval.json, the task whose blind accuracy is highest, and in a sentence or
two why that task can be answered without looking (and what accuracy above its blind baseline would mean). The
grader checks that "why" names the task and what about its answers lets a blind model score; an explanation it
cannot check is left for the teacher to read. If two tasks tie for the highest blind accuracy, name either.
"""


def answers():
    return {
        "eval_json": None,          # path to the eval.json of your run, e.g. "out-ex7/eval.json"
        "count_accuracy": None,     # accuracy["count"] from it, a fraction (0.5 = 50%)
        "count_blind": None,        # blind_accuracy["count"]
        "best_blind_task": None,    # the task with the highest blind accuracy
        "why": None,                # your explanation, at least a sentence
    }
