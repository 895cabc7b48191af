"""
Train models and score them: the experiments behind the README's accuracy claims (bench.py measures the costs of
untrained models; these train).

    python experiments.py learn --json results/learn.json --png results/learn.png
        time to accuracy: trains each fusion with train.py (same data, same budget) and reports the iterations,
        training seconds and text tokens until each task first reaches 50, 80 and 90%; --vision_iters first
        pretrains one vision encoder that every fusion starts from
    python experiments.py paper              (make paper; --quick: tiny budgets, a few minutes)
        the paper's accuracy claims at toy scale: insertion, cross-attention variants and CASA from one
        pretrained vision encoder, each on every task at its fusion's own learning rates (setting (i)), cross and
        CASA adapting the frozen insertion VLM (setting (ii)), live captioning; keeps every run's record in
        results/paper_runs and writes results/paper.json, .md, .png and a captioned GIF
    python experiments.py captions --ckpt=out-video/ckpt.pt --frames=64 --max_text=160 --json=captions.json
        live captions of held-out clips streamed through one cache (sample.py --video's path), scored frame by
        frame: exact match, overall and per kind of caption; the blind baseline; the cache's bytes as a clip goes on
    python experiments.py score --ckpt=out/ckpt.pt --n=512 --json=score.json
        a checkpoint's exact match per task on more held-out conversations than train.py's eval (its first 64 are
        those), in each look (the default, the shifted, the varied: scenes.STYLES), and blind

Every run is a job of one runner (run_jobs): a process of its own, keeping its folder in --out_dir (checkpoint,
log, stdout.txt), so a rerun resumes what was interrupted and skips what is done; with every run done, a rerun only
scores and draws again. --redraw draws the picture (and paper's tables) again from --json alone, training nothing.

Options are --key=value or --key value: each command's own (see --help after the command) and, for learn and
paper, the model options of train.py (e.g. --n_embd=256).
"""
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from PIL import Image

import data
import figures
import scenes
from casa import FUSIONS, VLMConfig, check_fields
from common import (UsageError, build, caption_scores, check_writable, load_checkpoint, machine, model_config,
                    parse_fusions, parse_options, read_json, run_script, save_json, scores)

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class LearnOptions:
    fusions: str = ",".join(FUSIONS)  # comma-separated; trained one after another, each with the whole machine
    out_dir: str = "out-learn"    # one train.py run per fusion in OUT_DIR/FUSION (and the encoder in OUT_DIR/vision)
    vision_iters: int = 0         # first pretrain the vision encoder this many iterations (pretrain_vision.py),
                                  # once, and start every fusion from it; its time counts in every fusion's total
    vision_args: str = ""         # more pretrain_vision.py options, as on its command line (e.g. "--text_share=0")
    train_args: str = ""          # more train.py options, as on its command line (e.g. "--max_iters=600 --lr=3e-3")
    jobs: int = 1                 # fusions trained at once (each on cpu_count / jobs threads; 1: the whole machine)
    json: str = ""                # write the results here
    png: str = ""                 # accuracy against training seconds, a panel per task, a line per fusion
    redraw: bool = False          # train nothing: draw --png again from the results in --json

    def __post_init__(self):
        check_fields(self, at_least=dict(vision_iters=0, jobs=1))
        self.fusion_list = parse_fusions(self.fusions)
        for name in ("vision_args", "train_args"):
            try:
                shlex.split(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"--{name}: {e}") from None


@dataclass
class PaperOptions:
    out_dir: str = "results/paper_runs"  # every run keeps its folder here: its checkpoint (git-ignored) and its
                                  # record (log.jsonl, eval.json, ...): a rerun resumes, and skips a run whose record
                                  # is complete; out-paper (say) starts afresh
    quick: bool = False           # tiny models and budgets, a few minutes: checks the pipeline, not the claims
    jobs: int = 2                 # training runs at once (each on cpu_count / jobs threads)
    json: str = "results/paper.json"
    md: str = "results/paper.md"  # the tables
    png: str = "results/paper.png"  # per-task accuracy bars, a bar per variant, the blind baseline marked
    gif: str = "results/paper_casa.gif"  # a held-out clip captioned live by the casa model
    redraw: bool = False          # train nothing: write --md and draw --png again from the results in --json

    def __post_init__(self):
        check_fields(self, at_least=dict(jobs=1))


@dataclass
class CaptionOptions:
    ckpt: str = "out-video/ckpt.pt"  # a train.py checkpoint that learned the video task
    clips: int = 16               # held-out clips: seeds EVAL_SEED0, EVAL_SEED0 + 1, ...
    frames: int = 8               # frames per clip
    max_text: int | None = None   # keep only the latest N text tokens in the cache (sample.py --max_text)
    style: str = "default"        # how the clips are drawn: default, or shifted (never seen in training)
    validation: bool = False      # the validation clips instead (seeds VALIDATION_SEED0 + i): for choosing an
                                  # option, such as --max_text, without looking at the held-out clips
    json: str = ""                # write the scores here

    def __post_init__(self):
        check_fields(self, at_least=dict(clips=1, frames=1, max_text=1))
        scenes.check_style(self.style)


@dataclass
class ScoreOptions:
    ckpt: str = "out/ckpt.pt"     # a train.py checkpoint; it is scored on the tasks it trained on
    n: int = 512                  # held-out conversations per task: seeds EVAL_SEED0 + i, as train.py's eval
    json: str = ""                # write the scores here

    def __post_init__(self):
        check_fields(self, at_least=dict(n=1))


MODEL_OPTIONS = ("model options (VLMConfig, as in train.py)", VLMConfig)
COMMANDS = {"learn": [("learn options", LearnOptions), MODEL_OPTIONS],
            "paper": [("paper options", PaperOptions), MODEL_OPTIONS],
            "captions": [("captions options", CaptionOptions)],
            "score": [("score options", ScoreOptions)]}  # the checkpoint says what the model is


# ------------------------------------------------------------------------------------------------ the job runner


@dataclass
class Job:
    """One run of another script, in a process of its own (scripts are peers: they share no imports), its output
    in OUT_DIR/stdout.txt. A training run (train.py, pretrain_vision.py) gets --out_dir and keeps its checkpoint
    there: a rerun resumes it, or skips it once the checkpoint reached `iters` (None: the budget the checkpoint
    records). A train.py run whose checkpoint was removed counts as done by its record, eval.json at `iters`, until
    a run starting from it (its `parent`) needs the checkpoint again: then it is trained again from its own parent
    (training is deterministic: the same seed, options and threads give the same weights). Any other job (trains=False) runs
    every time."""
    script: str
    out_dir: str
    argv: list
    iters: int | None = None
    trains: bool = True
    parent: "Job | None" = None  # the run whose checkpoint this one starts from (--init_from)


def finished(job, needed=False):
    """Whether job is done: its checkpoint at its budget, or, unless its checkpoint is `needed`, its record."""
    path, record = os.path.join(job.out_dir, "ckpt.pt"), os.path.join(job.out_dir, "eval.json")
    if not job.trains:
        return False
    if os.path.exists(path):
        ckpt = load_checkpoint(path)
        return ckpt.get("iter", 0) >= (job.iters or ckpt["train_config"]["max_iters"])
    return not needed and job.iters is not None and os.path.exists(record) and read_json(record)["iter"] >= job.iters


def checkpoint(job, n=1):
    """The path of job's checkpoint, training the run again first if it was removed (and its parents, if theirs
    were too)."""
    if not finished(job, needed=True):
        run_jobs([job], n, needed=True)
    return os.path.join(job.out_dir, "ckpt.pt")


def threads(job, share):
    """The threads a run trains on: those it first trained on (recorded in its folder's `threads`), else `share`,
    then recorded. Sums split over another number of threads round otherwise, so a run resumed or trained again on
    other threads would not give the same weights."""
    path = os.path.join(job.out_dir, "threads")
    if not job.trains:
        return share
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(f"{share}\n")
    with open(path) as f:
        return int(f.read())


def run_jobs(jobs, n=1, needed=False):
    """Run the unfinished jobs in order (needed: those without a checkpoint too), n at a time, each on its share of
    the cores, after the checkpoints they start from. A failed job stops the others (each keeps its last checkpoint)
    and ends in one line naming its stdout.txt."""
    todo, running = [j for j in jobs if not finished(j, needed)], []
    if not todo:
        return
    for parent in {j.parent.out_dir: j.parent for j in todo if j.parent}.values():
        checkpoint(parent, n)
    share = max(1, (os.cpu_count() or 1) // min(n, len(todo)))
    try:
        while todo or running:
            while todo and len(running) < n:
                job = todo.pop(0)
                os.makedirs(job.out_dir, exist_ok=True)
                resume = job.trains and os.path.exists(os.path.join(job.out_dir, "ckpt.pt"))
                print(f"{'resuming' if resume else 'training' if job.trains else 'running'}: {job.script} "
                      f"--out_dir={job.out_dir}", flush=True)
                out = open(os.path.join(job.out_dir, "stdout.txt"), "a")
                argv = [sys.executable, job.script, *([f"--out_dir={job.out_dir}"] if job.trains else []), *job.argv,
                        *(["--init_from=resume"] if resume else [])]
                env = {**os.environ, "OMP_NUM_THREADS": str(threads(job, share))}
                running.append((job, out, subprocess.Popen(argv, cwd=HERE, stdout=out, stderr=subprocess.STDOUT,
                                                           env=env)))
            time.sleep(0.2)
            for entry in [r for r in running if r[2].poll() is not None]:
                running.remove(entry)
                job, out, proc = entry
                out.close()
                if proc.returncode:
                    raise UsageError(f"{job.script} --out_dir={job.out_dir} failed (exit {proc.returncode}): "
                                     f"see {os.path.join(job.out_dir, 'stdout.txt')}")
    finally:  # interrupted or failed: the others stop too, each keeping its last checkpoint
        for _, out, proc in running:
            proc.terminate()
            proc.wait()
            out.close()


def eval_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [e for e in map(json.loads, f) if e.get("kind") == "eval"]


# ------------------------------------------------------------------------------------------------ learn

THRESHOLDS = (0.5, 0.8, 0.9)


def first_reached(curve, offset_s):
    """Per task the run evaluates and per threshold, the first eval at or above it: its iteration, training seconds
    (with the encoder's pretraining seconds, offset_s) and text tokens; None if never reached."""
    table = {}
    for task in curve[0]["accuracy"]:
        table[task] = {}
        for level in THRESHOLDS:
            hit = next((e for e in curve if e["accuracy"].get(task, 0) >= level), None)
            table[task][f"{level:.0%}"] = None if hit is None else {
                "iter": hit["iter"], "train_s": round(offset_s + hit["train_s"], 1), "text_tokens": hit["text_tokens"]}
    return table


def learn(args, overrides):
    """The encoder (with --vision_iters), then each fusion from it, --jobs runs at a time (1: every run's seconds
    are measured on the whole machine)."""
    model_argv = [f"--{k}={v}" for k, v in overrides.items()]
    where = lambda *parts: os.path.join(args.out_dir, *parts)
    vision = [Job("pretrain_vision.py", where("vision"), [f"--max_iters={args.vision_iters}",
                                                          f"--eval_interval={args.vision_iters}", *model_argv,
                                                          *shlex.split(args.vision_args)],
                  args.vision_iters)] if args.vision_iters else []
    init = [f"--init_from={where('vision', 'ckpt.pt')}"] if vision else []
    runs = {f: Job("train.py", where(f), [f"--fusion={f}", *init, *model_argv, *shlex.split(args.train_args)])
            for f in args.fusion_list}
    run_jobs(vision)
    run_jobs(list(runs.values()), args.jobs)
    vision_s = eval_log(where("vision"))[-1]["train_s"] if vision else 0.0  # drawing its scenes included, as train_s
    results = {}
    for fusion, job in runs.items():
        curve = eval_log(job.out_dir)
        results[fusion] = {"vision_pretrain_s": vision_s, "reached": first_reached(curve, vision_s),
                           "curve": [{k: e[k] for k in ("iter", "train_s", "data_s", "text_tokens", "accuracy",
                                                        "blind_accuracy", "shifted_accuracy") if k in e}
                                     for e in curve]}
    return results


def learn_table(results):
    rows = [f"{'fusion':<10} {'task':<9} " + " ".join(f"{'to ' + f'{t:.0%}':>22}" for t in THRESHOLDS),
            f"{'':<20} " + " ".join(f"{'iter / s / tokens':>22}" for _ in THRESHOLDS)]
    for fusion, r in results.items():
        for task, levels in r["reached"].items():
            cells = ["-" if hit is None else f"{hit['iter']} / {hit['train_s']:.0f} / {hit['text_tokens']:,}"
                     for hit in levels.values()]
            rows.append(f"{fusion:<10} {task:<9} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(rows)


def draw_learning_curves(results, path):
    """A panel per task: held-out accuracy against the seconds since the encoder's pretraining began, a line per
    fusion; the pretraining (shared by every fusion, before their first eval) shaded."""
    vision_s = max(r["vision_pretrain_s"] for r in results.values())
    stage = (0, vision_s, f"encoder\npretraining\n({vision_s:.0f} s)") if vision_s else None
    tasks = next(iter(results.values()))["reached"]  # the tasks the runs evaluate (first_reached)
    panels = [(f"{task}: held-out accuracy", "seconds of training (encoder included)", "accuracy",
               {fusion: [(r["vision_pretrain_s"] + e["train_s"], e["accuracy"].get(task, 0)) for e in r["curve"]]
                for fusion, r in results.items()}) for task in tasks]
    figures.line_panels(panels, cols=2 if len(tasks) <= 4 else 3, panel=(640, 400), y=(0, 1), yfmt=figures.percent,
                        stage=stage).save(path)


# ------------------------------------------------------------------------------------------------ paper
# The paper's comparisons at toy scale (PAPER.md: settings (i) and (ii), Tables 2 and 3, live captioning), on the
# staged recipe of make tasks: one vision encoder pretrained in the varied look, then every variant from it on every
# task at once (the eight question tasks and 8-frame live captions); variants differ in the fusion only: same data,
# same budget, the same first seeds, and each fusion at the learning rates its own short sweep chose.

COARSE_TASKS = ("color", "shape", "count", "position")
FINE_TASKS = ("reading", "relation", "caption", "multi_image")  # a word, two objects, every object, the latest image
VIDEO_TASKS = ("video",)  # live captions: what moved, appeared or left since the last frame
VARIANTS = {"insertion": ["--fusion=insertion"], "cross": ["--fusion=cross"],
            "cross_every2": ["--fusion=cross", "--cross_every=2"], "cross_gate": ["--fusion=cross", "--gate=true"],
            "cross_shared": ["--fusion=cross", "--share_weights=true"], "casa": ["--fusion=casa"]}
FUSION_OF = {v: flags[0].removeprefix("--fusion=") for v, flags in VARIANTS.items()}  # whose learning rates it gets
ADAPTED = ("cross", "casa")  # setting (ii): new layers on the frozen insertion VLM of setting (i), its best seed
SEEDS = (1337, 1338, 1339)  # insertion, cross and casa run all three, the other variants the first two
LEARNING_RATES = (6e-3, 2e-4)  # the sweep's middle: new weights (--lr: the LM and the fusion layers, which start
# untrained) and the pretrained encoder's (--pretrained_lr)
RATE_SCALES = (1 / 3, 1, 3)  # the sweep's first axis: the new weights' rate times each, the encoder's held
ENCODER_SCALES = (1 / 3, 1, 3)  # its second axis, from the first's choice: the encoder's rate times each; a winning
# edge is followed one factor further, at most STEPS_PAST_EDGE times
STEPS_PAST_EDGE = 2
MARGIN = 0.04  # a rate off x1 must beat it by more: two seeds of one rate differ 3.4-4.7 points (paper_notebook.md)
# iterations per stage, held-out conversations per task, held-out clips and frames per clip (training and eval)
BUDGETS = {"full": dict(vision=3200, sweep=400, vlm=2400, adapt=1200, eval_per_task=64, clips=16, frames=8),
           "quick": dict(vision=2, sweep=2, vlm=5, adapt=2, eval_per_task=2, clips=1, frames=3)}
QUICK_MODEL = dict(image_size=32, vit_layers=1, vit_dim=32, vit_heads=2, n_layer=2, n_head=2, n_embd=32)
CURVE_POINTS = 10  # evals in a setting (i) run (one at 80% of it): its crossing times and plateau are read off them
PLATEAU = 0.01  # the budget is enough once the mean accuracy gains at most this over the last 20% of a run


def seeds_of(variant):
    return SEEDS if variant in FUSIONS else SEEDS[:2]


def rates(rate):
    """train.py's learning-rate options at a sweep point, rate = (scale, encoder_scale): the new weights' rate at
    `scale` times theirs in LEARNING_RATES, the encoder's at encoder_scale times its own."""
    new, encoder = (r * x for r, x in zip(LEARNING_RATES, rate))
    return [f"--lr={new:.3g}", f"--pretrained_lr={encoder:.3g}", "--warmup_iters=50"]


def rate_name(rate):
    """A sweep point's name in run folders and tables: x1, or x1_enc3 once the encoder's rate is off the first axis."""
    scale, encoder_scale = rate
    return f"x{scale:.3g}" + ("" if encoder_scale == 1 else f"_enc{encoder_scale:.3g}")


def chosen_scale(sweep):
    """The sweep's rule along one axis, {scale: summary of its run's validation accuracy} -> scale: the highest mean
    over every task, if it beats the default's (scale 1) by more than MARGIN; else the default."""
    best = max(sweep, key=lambda scale: (round(sweep[scale]["mean"], 4), -scale))
    return best if sweep[best]["mean"] > sweep[1]["mean"] + MARGIN else 1


def past_edge(tried):
    """The line search's next scale, {scale: summary} -> one factor past the winning edge when that edge beats its
    neighbour outright, else None (the winner has tried neighbours on both sides, or it won a tie)."""
    ordered, step = sorted(tried), ENCODER_SCALES[-1] / ENCODER_SCALES[-2]
    mean = lambda scale: round(tried[scale]["mean"], 4)
    if mean(ordered[-1]) > max(mean(s) for s in ordered[:-1]):
        return ordered[-1] * step
    return ordered[0] / step if mean(ordered[0]) > max(mean(s) for s in ordered[1:]) else None


def final_eval(job):
    result = read_json(os.path.join(job.out_dir, "eval.json"))
    return {k: result[k] for k in ("iter", "train_s", "accuracy", "blind_accuracy") if k in result}


def validation_accuracy(job, n_per_task):
    """A run's exact-match accuracy per task on n_per_task validation conversations of each of its tasks (seeds
    from scenes.VALIDATION_SEED0: neither training nor the held-out set draws them), scored once into
    validation.json. The sweep's rates and setting (ii)'s source are chosen on these, so the held-out accuracy the
    tables report was never a criterion of choice."""
    path = os.path.join(job.out_dir, "validation.json")
    if not os.path.exists(path):
        save_json(path, scores(checkpoint(job), n_per_task, seed0=scenes.VALIDATION_SEED0)["default"])
    return read_json(path)


def summary(accuracy):
    """The tasks, then the means the paper's tables report: coarse, fine-grained and all tasks (live captions
    included)."""
    mean = lambda tasks: sum(accuracy[t] for t in tasks) / len(tasks)
    return {**accuracy, "coarse": mean(COARSE_TASKS), "fine": mean(FINE_TASKS),
            "mean": mean(COARSE_TASKS + FINE_TASKS + VIDEO_TASKS)}


def caption_table(c, args):
    """The scores of caption_scores as lines of text."""
    window = f"the latest {args.max_text} text tokens" if args.max_text else "all the text"
    which = "validation" if args.validation else "held-out"
    rows = [f"{c['fusion']} ({args.ckpt}): {args.clips} {which} clips of {args.frames} frames ({args.style} look), "
            f"the cache keeping {window}", f"{'caption':<12} {'frames':>6} {'exact':>7}",
            f"{'all':<12} {c['frames']:>6} {percent(c['exact']) + '%':>7}"]
    rows += [f"{k:<12} {r['frames']:>6} {'-' if r['exact'] is None else percent(r['exact']) + '%':>7}"
             for k, r in c["by_kind"].items()]
    rows += [f"names the right colours and shapes: {percent(c['soft'])}%; blind (gray frames): exact "
             f"{percent(c['blind_exact'])}%, names {percent(c['blind_soft'])}%; {c['ms_per_frame']:.0f} ms a frame",
             "cache bytes after frame " + "; ".join(f"{f}: {b:,}" for f, b in c["cache_bytes_at"].items())]
    return "\n".join(rows)


def curve_facts(job):
    """From a run's evals: the first iteration, training seconds and text tokens at which its mean accuracy over
    every task reached 50, 80 and 90% (first_reached), and that mean's gain since the last eval at or before 80% of
    the run (None if there is none)."""
    curve = [{**e, "accuracy": summary(e["accuracy"])} for e in eval_log(job.out_dir)]
    before = [e for e in curve if e["iter"] <= 0.8 * curve[-1]["iter"]]
    gain = curve[-1]["accuracy"]["mean"] - before[-1]["accuracy"]["mean"] if before else None
    return {"reached": first_reached(curve, 0)["mean"], "last_20pct_gain": gain}


def paper(args, overrides):
    """Four stages, each a set of pretrain_vision.py / train.py runs in OUT_DIR (finished ones are skipped): the
    vision encoder; the learning-rate sweep (insertion, cross and casa from the encoder, short, at RATE_SCALES of the
    new weights' rate, then ENCODER_SCALES of the encoder's); setting (i) (every variant and seed from the encoder,
    at its fusion's chosen rates, on every task); setting (ii) (cross and casa on the frozen insertion model of the
    best seed). Then the scores: each run's final eval.json and curve, and the first seed's live captions of
    held-out clips."""
    b = BUDGETS["quick" if args.quick else "full"]
    overrides = {**(QUICK_MODEL if args.quick else {}), **overrides}
    small = ["--batch_size=4"] if args.quick else []
    where = lambda *parts: os.path.join(args.out_dir, *parts)
    vision = Job("pretrain_vision.py", where("vision"),
                 [f"--max_iters={b['vision']}", f"--eval_interval={b['vision']}", "--style=varied", *small,
                  *(["--eval_scenes=8"] if args.quick else []), *[f"--{k}={v}" for k, v in overrides.items()]],
                 b["vision"])
    every_task = ",".join(COARSE_TASKS + FINE_TASKS + VIDEO_TASKS)

    def vlm(parent, iters, rate, evals=1):  # a train.py run from parent's checkpoint, on every task
        argv = [f"--init_from={os.path.join(parent.out_dir, 'ckpt.pt')}", f"--tasks={every_task}",
                f"--frames={b['frames']}", "--style=varied", f"--max_iters={iters}",
                f"--eval_interval={max(1, iters // evals)}", f"--eval_per_task={b['eval_per_task']}",
                "--progress=false", *rates(rate), *small]
        return lambda out_dir, *flags: Job("train.py", out_dir, [*argv, *flags], iters, parent=parent)
    sweep_job = lambda f, rate: vlm(vision, b["sweep"], rate)(where("sweep", f"{f}_{rate_name(rate)}"),
                                                              f"--fusion={f}", f"--seed={SEEDS[0]}")
    validation = lambda job: summary(validation_accuracy(job, b["eval_per_task"]))
    # the first axis, the new weights' rate; then the second, the encoder's from the first's choice, past winning edges
    first = {(f, scale): sweep_job(f, (scale, 1)) for f in FUSIONS for scale in RATE_SCALES}
    run_jobs(list(first.values()), args.jobs)
    swept = {f: {scale: validation(first[(f, scale)]) for scale in RATE_SCALES} for f in FUSIONS}
    scale_of = {f: chosen_scale(swept[f]) for f in FUSIONS}
    encoder_swept = {f: {1: swept[f][scale_of[f]]} for f in FUSIONS}
    todo = {f: [scale for scale in ENCODER_SCALES if scale != 1] for f in FUSIONS}
    for _ in range(1 + STEPS_PAST_EDGE):
        second = {(f, scale): sweep_job(f, (scale_of[f], scale)) for f in FUSIONS for scale in todo[f]}
        run_jobs(list(second.values()), args.jobs)
        for (f, scale), job in second.items():
            encoder_swept[f][scale] = validation(job)
        todo = {f: [step] if (step := past_edge(encoder_swept[f])) else [] for f in FUSIONS}
    rate_of = {f: (scale_of[f], chosen_scale(encoder_swept[f])) for f in FUSIONS}

    # a run's folder names its rates: should the sweep choose otherwise, no finished run at other rates is reused
    at = lambda name, f: f"{name}_{rate_name(rate_of[f])}"
    setting_i = {(v, seed): vlm(vision, b["vlm"], rate_of[FUSION_OF[v]], CURVE_POINTS)(
                     where("i", f"{at(v, FUSION_OF[v])}_s{seed}"), *flags, f"--seed={seed}")
                 for v, flags in VARIANTS.items() for seed in seeds_of(v)}
    # the three fusions first, a seed of each at a time: a run cut short (it resumes) already compares them;
    # setting (ii) and the other variants come last
    core = sorted((key for key in setting_i if key[0] in FUSIONS), key=lambda key: key[1])
    run_jobs([setting_i[key] for key in core], args.jobs)
    source_seed = max(SEEDS, key=lambda seed: validation(setting_i[("insertion", seed)])["mean"])
    source = setting_i[("insertion", source_seed)]  # the strongest insertion model
    adapted = {f: vlm(source, b["adapt"], rate_of[f])(where("ii", at(f, f)), f"--fusion={f}", "--pretrained_lr=0",
                                                      f"--seed={SEEDS[0]}") for f in ADAPTED}
    run_jobs([*adapted.values(), *(job for key, job in setting_i.items() if key not in core)], args.jobs)
    captions = {}  # live captions from each fusion's first seed, scored once (a second invocation re-draws); first,
    for f in FUSIONS:  # as a run trained again for its checkpoint rewrites its record (the same accuracy, new times)
        path = os.path.join(setting_i[(f, SEEDS[0])].out_dir, "captions.json")
        if not os.path.exists(path):
            save_json(path, caption_scores(checkpoint(setting_i[(f, SEEDS[0])]), b["clips"], b["frames"]))
        captions[f] = read_json(path)
    runs = {key: {**final_eval(job), **curve_facts(job)} for key, job in setting_i.items()}
    for r in runs.values():
        r.update(summary(r["accuracy"]))  # a seed's record: its final eval and curve, then its columns

    results = {"budget": b, "model": overrides,
               "sweep": {f: {"scales": {f"{scale:.3g}": acc for scale, acc in swept[f].items()},
                             "chosen": f"{scale_of[f]:.3g}",
                             "encoder_scales": {f"{x:.3g}": acc for x, acc in sorted(encoder_swept[f].items())},
                             "encoder_chosen": f"{rate_of[f][1]:.3g}", "rates": rates(rate_of[f])[:-1]}
                         for f in FUSIONS},
               "setting_i": {}, "setting_ii": {},
               "captioning": {f: {**c, "train_s": runs[(f, SEEDS[0])]["train_s"]} for f, c in captions.items()}}
    for v in VARIANTS:
        seeds = {seed: runs[(v, seed)] for seed in seeds_of(v)}
        mean = lambda key: {c: sum(r[key][c] for r in seeds.values()) / len(seeds) for c in seeds[SEEDS[0]][key]}
        results["setting_i"][v] = {"mean": summary(mean("accuracy")), "blind": summary(mean("blind_accuracy")),
                                   "seeds": {seed: {k: x for k, x in r.items() if k != "blind_accuracy"}
                                             for seed, r in seeds.items()}}
    base = summary(runs[("insertion", source_seed)]["accuracy"])
    results["setting_ii"]["insertion"] = {"accuracy": base, "seed": source_seed}
    for f, job in adapted.items():
        r = final_eval(job)
        acc = summary(r["accuracy"])
        results["setting_ii"][f] = {"accuracy": acc, "blind": summary(r["blind_accuracy"]),
                                    "drop": {t: base[t] - acc[t] for t in acc}, "train_s": r["train_s"]}
    if args.gif:  # a held-out clip (seed EVAL_SEED0), captioned by casa through sample.py itself
        run_jobs([Job("sample.py", where("gif"), [f"--ckpt={checkpoint(setting_i[('casa', SEEDS[0])])}",
                                                   f"--video=synthetic:{scenes.EVAL_SEED0}", f"--gif={args.gif}"],
                      trains=False)])
    return results


def percent(x):
    return f"{100 * x:.1f}"


def seed_range(row, column):
    """(mean, min, max) of one column over a setting (i) variant's seeds."""
    values = [seed[column] for seed in row["seeds"].values()]
    return sum(values) / len(values), min(values), max(values)


def spread(name, m):
    return f"{name} {percent(m[0])} ({percent(m[1])}-{percent(m[2])})"


UNSURE = "cannot tell at this scale"


def ahead(a, b):
    """The verdict on "a is ahead of b", for two seed ranges: told only when the ranges do not overlap."""
    return "agrees" if a[1] > b[2] else "disagrees" if a[2] < b[1] else UNSURE


def close(a, b, points):
    """The verdict on "a is within `points` of b" (on average): the means that close agree; ranges apart disagree."""
    if abs(a[0] - b[0]) <= points / 100:
        return "agrees"
    return "disagrees" if a[1] > b[2] or a[2] < b[1] else UNSURE


def claims(r):
    """The paper's accuracy claims (PAPER.md), each as (claim, verdict, the numbers). "A ahead of B" is told only when
    the seeds' ranges do not overlap (ahead); "A within N points of B" agrees when the means are that close and
    disagrees only when the ranges are apart (close); "A at least as good as B" agrees on the means and disagrees only
    when the ranges are apart. Adapting is judged only from a source at 85% or more (a drop from a weak model says
    little), on one seed, and a drop of at most 10 points counts as small."""
    of = lambda v, column: seed_range(r["setting_i"][v], column)
    fine = {v: of(v, "fine") for v in ("insertion", "cross", "casa")}
    mean = {v: of(v, "mean") for v in ("insertion", "cross", "casa", "cross_gate")}
    gap = fine["insertion"][0] - fine["cross"][0]
    half_closed = tuple(x + gap / 2 for x in fine["cross"])  # where casa must be to close half of that gap
    source, ii = r["setting_ii"]["insertion"], {f: r["setting_ii"][f] for f in ADAPTED}
    drops = ", ".join(f"{f} {100 * row['drop']['mean']:.1f}" for f, row in ii.items())
    return [
        ("Insertion is ahead of plain cross-attention on the fine-grained tasks",
         ahead(fine["insertion"], fine["cross"]),
         f"fine-grained mean: {spread('insertion', fine['insertion'])}, {spread('cross', fine['cross'])}"),
        ("CASA closes most of that gap", ahead(fine["casa"], half_closed) if gap > 0 else UNSURE + " (no gap to close)",
         f"fine-grained mean: {spread('casa', fine['casa'])}; half the gap closed would be {percent(half_closed[0])}"),
        ("Plain cross-attention is within about 1.5 points of insertion on average",
         close(mean["cross"], mean["insertion"], 1.5),
         f"mean: {spread('cross', mean['cross'])}, {spread('insertion', mean['insertion'])}"),
        ("CASA is about equal to plain cross-attention on average", close(mean["casa"], mean["cross"], 1.5),
         f"mean: {spread('casa', mean['casa'])}, {spread('cross', mean['cross'])}"),
        ("CASA needs no gate: without one it does at least as well as cross-attention with a tanh gate",
         "agrees" if mean["casa"][0] >= mean["cross_gate"][0]
         else "disagrees" if mean["casa"][2] < mean["cross_gate"][1] else UNSURE,
         f"mean: {spread('casa', mean['casa'])}, {spread('cross_gate', mean['cross_gate'])}"),
        ("Adapting a frozen insertion VLM costs a small drop (the paper: 6.8 points on average)",
         UNSURE + f" (the source is at {percent(source['accuracy']['mean'])}%, under 85%)"
         if source["accuracy"]["mean"] < 0.85 else
         "agrees" if all(0 <= row["drop"]["mean"] <= 0.1 for row in ii.values()) else "disagrees",
         f"drop in points, one seed: {drops}; the source (insertion, seed {source['seed']}) at "
         f"{percent(source['accuracy']['mean'])}%"),
    ]


def paper_tables(r):
    """Markdown: the learning-rate sweep; setting (i) in the shape of the paper's Table 2, with each variant's
    crossing times and plateau; setting (ii) as its Table 3; live captioning; the paper's claims, one line each."""
    columns = [*COARSE_TASKS, *FINE_TASKS, *VIDEO_TASKS, "coarse", "fine", "mean"]
    head = lambda *names: ["| " + " | ".join(names) + " |", "|---" * len(names) + "|"]
    if "sweep" not in r or any("encoder_scales" not in row for row in r["sweep"].values()):
        raise UsageError("this JSON is from make paper before it ran on the staged recipe (the sweep's second axis "
                         "the encoder's rate): run make paper again")
    b, sweep = r["budget"], r["sweep"]
    scales = [f"{scale:.3g}" for scale in RATE_SCALES]
    lines = [f"### Learning rates: each fusion's sweep (seed {SEEDS[0]}, {b['sweep']} iterations from the encoder; "
             "mean validation accuracy over every task)", "", "The new weights' rate (the LM's and the fusion "
             "layers'), the encoder's held:", "",
             *head("fusion", *(f"x{label} ({', '.join(rates((scale, 1))[:2])})"
                               for label, scale in zip(scales, RATE_SCALES)), "chosen")]
    for f, row in sweep.items():
        lines.append(f"| {f} | " + " | ".join(percent(row["scales"][s]["mean"]) for s in scales)
                     + f" | x{row['chosen']} |")
    lines += ["", "Then the encoder's rate, times each, from that choice (the new weights' held):", "",
              *head("fusion", "encoder rate x: mean", "chosen", "the rates every run of the fusion trains at")]
    for f, row in sweep.items():
        tried = ", ".join(f"x{x}: {percent(acc['mean'])}" for x, acc in row["encoder_scales"].items())
        lines.append(f"| {f} | {tried} | x{row['encoder_chosen']} | {', '.join(row['rates'])} |")
    lines += ["", f"Rule: on each axis the highest mean, if it beats the default's (x1) by more than "
              f"{100 * MARGIN:.0f} points, else x1; on the second axis, a winning "
              f"edge is followed one factor further, at most {STEPS_PAST_EDGE} times. Every variant of "
              "cross-attention runs at cross's rates.", "",
              f"### Setting (i): from the pretrained encoder, every task at once ({b['vlm']} iterations; mean "
              "over seeds "
              + ", ".join(map(str, SEEDS)) + f" for {', '.join(FUSIONS)}, the first two for the other variants; "
              "min-max in brackets)", "", *head("variant", *columns)]
    for v, row in r["setting_i"].items():
        cells = [f"{percent(row['mean'][c])} ({percent(seed_range(row, c)[1])}-{percent(seed_range(row, c)[2])})"
                 for c in columns]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append(f"| {v}, blind | " + " | ".join(percent(row["blind"][c]) for c in columns) + " |")
    lines += ["", "### Setting (i): when each variant got there (the mean over every task; iteration, per seed)", "",
              *head("variant", "final mean", *(f"to {t:.0%}" for t in THRESHOLDS),
                    f"gain over the last 20% (points, per seed; plateau: <= {100 * PLATEAU:.0f})")]
    for v, row in r["setting_i"].items():
        seeds = row["seeds"].values()
        reached = [" / ".join("-" if s["reached"][f"{t:.0%}"] is None else str(s["reached"][f"{t:.0%}"]["iter"])
                              for s in seeds) for t in THRESHOLDS]
        gains = " / ".join("-" if s["last_20pct_gain"] is None else f"{100 * s['last_20pct_gain']:+.1f}"
                           for s in seeds)
        lines.append(f"| {v} | {spread('', seed_range(row, 'mean')).strip()} | " + " | ".join(reached)
                     + f" | {gains} |")
    source = r["setting_ii"]["insertion"]
    lines += ["", f"### Setting (ii): adapting the frozen insertion VLM (its best seed, {source['seed']})", ""]
    lines += head("model", *columns, "drop (points, mean)")
    for name, row in r["setting_ii"].items():
        drop = f"{100 * row['drop']['mean']:.1f}" if "drop" in row else "-"
        label = "insertion (the source)" if name == "insertion" else f"{name}, adapted"
        lines.append(f"| {label} | " + " | ".join(percent(row["accuracy"][c]) for c in columns) + f" | {drop} |")
    lines += ["", f"### Live captioning ({b['clips']} held-out clips of {b['frames']} frames, one persistent cache)",
              "", *head("fusion", "exact", "names colours and shapes", "blind exact", "blind names", "ms / frame",
                        "cached tokens after a clip", "cache KiB")]
    for f, c in r["captioning"].items():
        lines.append(f"| {f} | {percent(c['exact'])} | {percent(c['soft'])} | {percent(c['blind_exact'])} | "
                     f"{percent(c['blind_soft'])} | {c['ms_per_frame']:.1f} | {c['cache_tokens']} | "
                     f"{c['cache_bytes'] / 1024:.0f} |")
    lines += ["", "### The paper's claims, read at this scale (the rules: experiments.claims)", ""]
    lines += [f"- **{claim}**: {verdict}. {numbers}." for claim, verdict, numbers in claims(r)]
    return "\n".join(lines) + "\n"


def draw_bars(r, path, group_width=150, height=460):
    """Accuracy per task (and the means), a group per task, a bar per variant; a black line marks the best blind
    baseline of the group."""
    groups = [*COARSE_TASKS, *FINE_TASKS, *VIDEO_TASKS, "mean"]
    series = {v: row["mean"] for v, row in r["setting_i"].items()}
    series.update({f"{f} (ii)": row["accuracy"] for f, row in r["setting_ii"].items() if f != "insertion"})
    blind = {g: max(row["blind"][g] for row in r["setting_i"].values()) for g in groups}
    image = Image.new("RGB", (80 + group_width * len(groups), height), "white")
    ax = figures.Axes(image, (0, 0, image.width, height - 70), (0, len(groups)), (0, 1),
                      "held-out accuracy per task: setting (i) from the encoder, mean over seeds; "
                      "(ii) adapting the frozen insertion VLM", ylabel="accuracy", yfmt=figures.percent,
                      xticks=[(g + 0.5, task) for g, task in enumerate(groups)])
    bar = 0.85 / len(series)
    for g, task in enumerate(groups):
        x0 = g + 0.075
        for i, (name, color) in enumerate(figures.colors(series).items()):
            ax.bar(x0 + i * bar, x0 + (i + 0.85) * bar, series[name][task], color, name)
        ax.hline(x0 - 0.02, x0 + len(series) * bar + 0.02, blind[task])
    figures.legend(ax.draw, (ax.left, height - 62),
                   [*ax.entries.items(), ("best blind baseline (the line)", figures.INK)], columns=5)
    image.save(path)


# ------------------------------------------------------------------------------------------------ main


def main(argv):
    command, (options, *model_options) = parse_options(argv, None, __doc__, COMMANDS)
    args = build(dict(COMMANDS[command])[f"{command} options"], options)
    overrides = model_options[0] if model_options else {}
    tok = data.Tokenizer()
    model_config(overrides, tok)  # bad model options refused here, before any run
    for fusion in getattr(args, "fusion_list", ()):  # and a bad name in learn's --fusions
        model_config({**overrides, "fusion": fusion}, tok)
    redraw = getattr(args, "redraw", False)
    for option in ("json", "png", "md", "gif"):
        if not (redraw and option == "json"):
            check_writable(getattr(args, option, ""), option)
    start = time.time()
    if redraw:
        results = read_json(args.json)
    elif command == "learn":
        results = learn(args, overrides)
    elif command == "paper":
        results = paper(args, overrides)
    elif command == "score":
        results = scores(args.ckpt, args.n, tuple(scenes.STYLES), blind=True)
    else:
        results = caption_scores(args.ckpt, args.clips, args.frames, args.max_text, args.style,
                                 scenes.VALIDATION_SEED0 if args.validation else scenes.EVAL_SEED0)
    if command == "learn":
        runs = {k: v for k, v in results.items() if k in FUSIONS}
        print(learn_table(runs))
        if args.png:
            draw_learning_curves(runs, args.png)
    elif command == "paper":
        tables = paper_tables(results)
        print(tables)
        if args.md:
            with open(args.md, "w") as f:
                f.write(tables)
        if args.png:
            draw_bars(results, args.png)
    elif command == "score":
        print(f"{args.ckpt}: exact match on {args.n} held-out conversations per task, in %")
        print(f"{'task':<12}" + "".join(f"{look:>9}" for look in results))
        for task in results["default"]:
            print(f"{task:<12}" + "".join(f"{percent(r[task]):>9}" for r in results.values()))
    else:
        print(caption_table(results, args))
    if args.json and not redraw:
        extra = {"wall_s_this_invocation": time.time() - start} if command == "paper" else {}
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "options": asdict(args), **extra, **results}, f, indent=1)


if __name__ == "__main__":
    run_script(main, "experiments.py")
