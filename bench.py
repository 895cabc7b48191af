"""
Measure what the three fusions cost, side by side (untrained weights are fine for timing).

    python bench.py stream --turns 256 --json results/stream.json --png results/stream.png
        the paper's streaming protocol: per turn one new frame plus G greedy tokens, one persistent cache, batch 1
    python bench.py train --json results/train.json
        training throughput on multi-frame sequences: text tokens/s, peak memory, MFU against a matmul peak
        measured here
    python bench.py table
        the analytic view: parameters, FLOPs per generated token and bytes cached per turn
    python bench.py learn --json results/learn.json --png results/learn.png
        time to accuracy: trains each fusion with train.py (same data, same budget) and reports the iterations,
        training seconds and text tokens until colour, shape, count and position first reach 50, 80 and 90%
    python bench.py paper              (make paper; --quick: tiny budgets, a minute or two)
        the paper's accuracy claims at toy scale: insertion, cross-attention variants and CASA from one text-only
        LM (setting (i)), cross and CASA adapting the frozen insertion VLM (setting (ii)), live captioning; writes
        results/paper.json, .md, .png and a captioned GIF; every run keeps its folder, so a rerun resumes

Options are --key=value or --key value: each command's own (see --help after the command) and the model options
of train.py (e.g. --n_embd=256). Every fusion runs in a fresh process, so the peak memory of one does not hide in
another's.
"""
import json
import multiprocessing
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode

import data
import scenes
from casa import FUSIONS, VLM, VLMConfig, check_fields, pick
from common import (UsageError, build, caption_stream, check_writable, load_checkpoint, load_model, model_config,
                    parse_options, pick_device, run_script)

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class BenchOptions:
    fusions: str = ",".join(FUSIONS)  # comma-separated
    json: str = ""                    # write the results here

    def __post_init__(self):
        check_fields(self, at_least=self.at_least)
        if not self.fusion_list or set(self.fusion_list) - set(FUSIONS):
            raise ValueError(f"--fusions takes a comma-separated list of {', '.join(FUSIONS)}, got {self.fusions!r}")

    @property
    def fusion_list(self):
        return [f for f in self.fusions.split(",") if f]


@dataclass
class StreamOptions(BenchOptions):
    device: str = "auto"
    tokens: int = 16              # G: greedy tokens per turn
    turns: int = 256              # streaming turns
    max_text: int | None = None   # rolling text window of the cache
    png: str = ""                 # draw latency and cache size against the turn
    at_least = dict(tokens=1, turns=1, max_text=1)


@dataclass
class TrainOptions(BenchOptions):
    device: str = "auto"
    frames: int = 8               # frames per clip
    batch_size: int = 8           # clips per step
    max_iters: int = 5            # timed steps
    at_least = dict(frames=1, batch_size=1, max_iters=1)


@dataclass
class TableOptions(BenchOptions):
    tokens: int = 16              # G: greedy tokens per turn
    turns: int = 256              # turns of context for the FLOPs per token
    at_least = dict(tokens=1, turns=1)


@dataclass
class LearnOptions(BenchOptions):
    out_dir: str = "out-learn"    # one train.py run per fusion in OUT_DIR/FUSION (and the encoder in OUT_DIR/vision)
    vision_iters: int = 0         # first pretrain the vision encoder this many iterations (pretrain_vision.py),
                                  # once, and start every fusion from it; its time counts in every fusion's total
    train_args: str = ""          # more train.py options, as on its command line (e.g. "--max_iters=600 --lr=3e-3")
    png: str = ""                 # accuracy against training seconds, a panel per task, a line per fusion
    at_least = dict(vision_iters=0)


@dataclass
class PaperOptions:
    out_dir: str = "out-paper"    # every run keeps its folder here (checkpoint, log, eval.json): a rerun resumes
    quick: bool = False           # tiny models and budgets, a minute or two: checks the pipeline, not the claims
    jobs: int = 2                 # training runs at once (each on cpu_count / jobs threads)
    json: str = "results/paper.json"
    md: str = "results/paper.md"  # the tables
    png: str = "results/paper.png"  # per-task accuracy bars, a bar per variant, the blind baseline marked
    gif: str = "results/paper_casa.gif"  # a held-out clip captioned live by the casa model

    def __post_init__(self):
        check_fields(self, at_least=dict(jobs=1))


COMMANDS = {name: [(f"{name} options", cls), ("model options (VLMConfig, as in train.py)", VLMConfig)]
            for name, cls in (("stream", StreamOptions), ("train", TrainOptions), ("table", TableOptions),
                              ("learn", LearnOptions), ("paper", PaperOptions))}


def model_for(fusion, overrides, device):
    tok = data.Tokenizer()
    torch.manual_seed(0)
    cfg = model_config({**overrides, "fusion": fusion}, tok)
    return VLM(cfg).to(device), tok


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb(device):
    """CUDA: the allocator's peak. CPU: the process's peak resident set (this process runs one fusion only)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine(device):
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def matmul_peak_flops(device, dtype=torch.float32, n=2048, repeats=10):
    """The best sustained FLOP/s of a large square matmul on this device: the yardstick for MFU (never a
    datasheet number)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    sync(device)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


# ------------------------------------------------------------------------------------------------ stream


@torch.no_grad()
def stream_one(fusion, args, overrides):
    """One fusion through the streaming protocol. Per turn the chunk [previous turn's last token, marker] and
    the new frame are prefilled (time to first token includes encoding the frame), then G - 1 more tokens are
    decoded one by one; the G-th is written at the next turn's prefill."""
    device = pick_device(args.device)
    model, tok = model_for(fusion, overrides, device)
    model.eval()
    size = model.config.image_size
    frames = [data.to_tensor(turn.images[0]).to(device)[None] for turn in scenes.make_clip(0, size, 64).turns]
    cache = model.new_cache(max_text=args.max_text)
    marker = torch.full((1, 1), tok.image_id, device=device)
    chunk, rows = marker, []
    for turn in range(args.turns):
        t0 = time.perf_counter()
        token = pick(model.next_token_logits(chunk, frames[turn % len(frames)], cache))
        sync(device)
        t1 = time.perf_counter()
        for _ in range(args.tokens - 1):
            token = pick(model.next_token_logits(token, cache=cache))
        sync(device)
        t2 = time.perf_counter()
        chunk = torch.cat([token, marker], 1)
        stats = cache.stats()
        rows.append({"turn": turn + 1, "ttft_ms": 1000 * (t1 - t0),
                     "decode_tok_s": (args.tokens - 1) / (t2 - t1) if args.tokens > 1 else float("nan"),
                     "kv_tokens": stats["tokens"], "kv_bytes": stats["bytes"]})
    tenth = max(1, args.turns // 10)
    mean = lambda key, part: sum(r[key] for r in part) / len(part)
    first, last = rows[:tenth], rows[-tenth:]
    return {"ttft_ms_first": mean("ttft_ms", first), "ttft_ms_last": mean("ttft_ms", last),
            "decode_tok_s_first": mean("decode_tok_s", first), "decode_tok_s_last": mean("decode_tok_s", last),
            "kv_tokens_final": rows[-1]["kv_tokens"], "kv_bytes_final": rows[-1]["kv_bytes"],
            "peak_mem_mb": peak_memory_mb(device), "per_turn": rows}


def crossover(results):
    """First turn from which casa decodes faster than insertion (compared on a 10-turn moving average)."""
    if not {"casa", "insertion"} <= set(results):
        return None
    speed = lambda name, i: sum(r["decode_tok_s"] for r in results[name]["per_turn"][max(0, i - 9):i + 1])
    turns = len(results["casa"]["per_turn"])
    return next((i + 1 for i in range(turns) if speed("casa", i) > speed("insertion", i)), None)


def draw_lines(panels, path, width=900, panel_height=300, ymax=None):
    """Panels stacked top to bottom, drawn with pillow: each (title, {fusion: [(x, y), ...]}), one line a fusion,
    axes from 0 to the largest x and y (or ymax)."""
    colors = {"insertion": (214, 39, 40), "cross": (31, 119, 180), "casa": (44, 160, 44)}
    img = Image.new("RGB", (width, panel_height * len(panels)), "white")
    draw = ImageDraw.Draw(img)
    for p, (title, lines) in enumerate(panels):
        top, left, w, h = 30 + p * panel_height, 70, width - 100, panel_height - 70
        draw.rectangle([left, top, left + w, top + h], outline="black")
        points = [pt for line in lines.values() for pt in line]
        xmax = max((x for x, _ in points), default=1) or 1
        top_y = ymax or max((y for _, y in points), default=1) or 1
        draw.text((left, top - 18), title, fill="black")
        draw.text((4, top), f"{top_y:.4g}", fill="black")
        draw.text((4, top + h - 10), "0", fill="black")
        draw.text((left + w - 30, top + h + 4), f"{xmax:.4g}", fill="black")
        for name, line in lines.items():
            pts = [(left + w * x / xmax, top + h - h * y / top_y) for x, y in line]
            if len(pts) > 1:
                draw.line(pts, fill=colors.get(name, "black"), width=2)
        for i, name in enumerate(lines):
            draw.text((left + w - 90, top + 8 + 14 * i), name, fill=colors.get(name, "black"))
    img.save(path)


# ------------------------------------------------------------------------------------------------ train


def train_one(fusion, args, overrides):
    """Training steps on streaming clips of `frames` frames (one frame + its caption per window)."""
    device = pick_device(args.device)
    model, tok = model_for(fusion, overrides, device)
    size = model.config.image_size
    convs = [scenes.make_clip(seed, size, args.frames) for seed in range(args.batch_size)]
    batch = data.collate(convs, tok, size)
    idx, targets, images = batch.idx.to(device), batch.targets.to(device), batch.images.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        _, loss = model(idx, images, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, kernels, optimizer state
    with FlopCounterMode(display=False) as counter:
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.max_iters):
        step()
    sync(device)
    seconds = (time.perf_counter() - t0) / args.max_iters
    text_tokens = int((batch.idx != tok.pad_id).sum())
    flops = counter.get_total_flops()
    peak = matmul_peak_flops(device)
    return {"text_tok_s": text_tokens / seconds, "ms_per_iter": 1000 * seconds, "peak_mem_mb": peak_memory_mb(device),
            "flops_per_iter": flops, "mfu": flops / seconds / peak, "matmul_peak_tflops": peak / 1e12,
            "text_tokens_per_iter": text_tokens, "stream_tokens_per_iter": text_tokens + (
                images.size(0) * model.config.n_image_tokens if fusion == "insertion" else 0)}


# ------------------------------------------------------------------------------------------------ table


def analytic_table(fusions, overrides, turns, tokens):
    """Per fusion, from the config alone: parameters, FLOPs per generated token after `turns` streaming turns,
    and bytes added to the cache per turn (fp32 keys and values)."""
    tok = data.Tokenizer()
    rows = {}
    for fusion in fusions:
        cfg = model_config({**overrides, "fusion": fusion}, tok)
        model = VLM(cfg)
        counts = model.param_counts()
        C, N, L = cfg.n_embd, cfg.n_image_tokens, cfg.n_layer
        per_turn = tokens + 1 + (N if fusion == "insertion" else 0)  # marker + G tokens (+ the frame)
        n_fusion = len(model.fusion_blocks())
        lm_matmuls = counts["language_model"] + counts["fusion"]  # the tied embedding counts once: the head
        context = turns * per_turn
        window = {"insertion": 0, "cross": N, "casa": N + tokens + 1}[fusion]
        # 2 FLOPs per weight per token, plus q.k and a.v over every visible key (4 C per key per layer)
        flops = 2 * lm_matmuls + 4 * C * (L * context + n_fusion * window)
        rows[fusion] = {"params": counts["total"], "fusion_params": counts["fusion"],
                        "flops_per_token": flops, "kv_bytes_per_turn": per_turn * 2 * C * 4 * L}
    return rows


# ------------------------------------------------------------------------------------------------ learn

LEARN_TASKS = ("color", "shape", "count", "position")
THRESHOLDS = (0.5, 0.8, 0.9)


def run_script_for(script, argv):
    """Run another casa script as a program (scripts are peers: they share no imports). Its errors pass through."""
    r = subprocess.run([sys.executable, script, *argv], cwd=HERE)
    if r.returncode:
        raise UsageError(f"{script} {' '.join(argv)} failed (exit {r.returncode})")


def eval_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [e for e in map(json.loads, f) if e.get("kind") == "eval"]


def first_reached(curve, offset_s):
    """Per task and threshold, the first eval at or above it: its iteration, training seconds (with the encoder's
    pretraining seconds, offset_s) and text tokens; None if never reached."""
    table = {}
    for task in LEARN_TASKS:
        table[task] = {}
        for level in THRESHOLDS:
            hit = next((e for e in curve if e["accuracy"].get(task, 0) >= level), None)
            table[task][f"{level:.0%}"] = None if hit is None else {
                "iter": hit["iter"], "train_s": round(offset_s + hit["train_s"], 1), "text_tokens": hit["text_tokens"]}
    return table


def learn(args, overrides):
    model_argv = [f"--{k}={v}" for k, v in overrides.items()]
    vision_s, init = 0.0, []
    if args.vision_iters:
        vision_dir = os.path.join(args.out_dir, "vision")
        run_script_for("pretrain_vision.py", [f"--out_dir={vision_dir}", f"--max_iters={args.vision_iters}",
                                              f"--eval_interval={args.vision_iters}", *model_argv])
        vision_s = eval_log(vision_dir)[-1]["train_s"]  # drawing its scenes included, like train.py's train_s
        init = [f"--init_from={os.path.join(vision_dir, 'ckpt.pt')}"]
    results = {}
    for fusion in args.fusion_list:
        out = os.path.join(args.out_dir, fusion)
        run_script_for("train.py", [f"--out_dir={out}", f"--fusion={fusion}", *init, *model_argv,
                                    *shlex.split(args.train_args)])
        curve = eval_log(out)
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


# ------------------------------------------------------------------------------------------------ paper
# The paper's comparisons at toy scale (PAPER.md: settings (i) and (ii), Tables 2 and 3, live captioning). Every
# VLM starts from one text-only LM, which starts from one pretrained vision encoder; variants differ in the fusion
# only: same data, same budget, same learning rates, same seeds.

COARSE_TASKS, FINE_TASKS = LEARN_TASKS, ("reading", "multi_image")
VARIANTS = {"insertion": ["--fusion=insertion"], "cross": ["--fusion=cross"],
            "cross_every2": ["--fusion=cross", "--cross_every=2"], "cross_gate": ["--fusion=cross", "--gate=true"],
            "cross_shared": ["--fusion=cross", "--share_weights=true"], "casa": ["--fusion=casa"]}
ADAPTED = ("cross", "casa")  # setting (ii): new layers on the frozen insertion VLM of setting (i), first seed
SEEDS = (1337, 1338)
# iterations per stage, held-out conversations per task, held-out clips and frames per clip (training and eval)
BUDGETS = {"full": dict(vision=800, lm=400, vlm=800, adapt=300, video=300, eval_per_task=64, clips=16, frames=8),
           "quick": dict(vision=2, lm=2, vlm=2, adapt=2, video=2, eval_per_task=2, clips=1, frames=3)}
QUICK_MODEL = dict(image_size=32, vit_layers=1, vit_dim=32, vit_heads=2, n_layer=2, n_head=2, n_embd=32)
LEARNING_RATES = ["--lr=6e-3", "--pretrained_lr=1e-3", "--warmup_iters=50"]  # new layers; everything pretrained


@dataclass
class Job:
    script: str   # pretrain_vision.py or train.py
    out_dir: str
    iters: int
    argv: list


def finished(job):
    path = os.path.join(job.out_dir, "ckpt.pt")
    return os.path.exists(path) and load_checkpoint(path).get("iter", 0) >= job.iters


def run_jobs(jobs, n):
    """Run the unfinished jobs, n at a time, each in its own process on its share of the cores (output in
    OUT_DIR/stdout.txt). A job that left a checkpoint resumes from it; a finished one is skipped."""
    todo, running = [j for j in jobs if not finished(j)], []
    if not todo:
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // min(n, len(todo))))}
    try:
        while todo or running:
            while todo and len(running) < n:
                job = todo.pop(0)
                os.makedirs(job.out_dir, exist_ok=True)
                resume = ["--init_from=resume"] if os.path.exists(os.path.join(job.out_dir, "ckpt.pt")) else []
                print(f"{'resuming' if resume else 'training'}: {job.script} --out_dir={job.out_dir}", flush=True)
                out = open(os.path.join(job.out_dir, "stdout.txt"), "a")
                argv = [sys.executable, job.script, f"--out_dir={job.out_dir}", *job.argv, *resume]
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


def final_eval(job):
    with open(os.path.join(job.out_dir, "eval.json")) as f:
        result = json.load(f)
    return {k: result[k] for k in ("iter", "train_s", "accuracy", "blind_accuracy") if k in result}


def summary(accuracy):
    """The tasks, then the means the paper's tables report: coarse, fine-grained and all tasks."""
    mean = lambda tasks: sum(accuracy[t] for t in tasks) / len(tasks)
    return {**accuracy, "coarse": mean(COARSE_TASKS), "fine": mean(FINE_TASKS),
            "mean": mean(COARSE_TASKS + FINE_TASKS)}


def named(caption):
    """The colours and shapes a caption names: the softer score asks only for these."""
    return sorted(w for w in caption.split() if w in scenes.COLORS or w in scenes.SHAPES)


def caption_scores(ckpt_path, n_clips, frames):
    """Held-out clips streamed through the live-captioning path, frame by frame: exact match and the share of
    frames whose caption names the right colours and shapes, for the real frames and for blank ones (the blind
    baseline); milliseconds per frame and the cache after a clip."""
    model, tok, _ = load_model(ckpt_path, "cpu")
    size, scores = model.config.image_size, {}
    gray = Image.new("RGB", (size, size), data.GRAY)
    for blind in (False, True):
        hits, soft, seconds = 0, 0, []
        for i in range(n_clips):
            clip = scenes.make_clip(scenes.EVAL_SEED0 + i, size, frames)
            shown = [gray if blind else turn.images[0] for turn in clip.turns]
            for turn, (said, s, cache) in zip(clip.turns, caption_stream(model, tok, shown, "cpu", 24)):
                hits, soft = hits + (said == turn.answer), soft + (named(said) == named(turn.answer))
                seconds.append(s)
        prefix = "blind_" if blind else ""
        scores.update({f"{prefix}exact": hits / len(seconds), f"{prefix}soft": soft / len(seconds)})
        if not blind:
            stats = cache.stats()
            scores.update(frames=len(seconds), ms_per_frame=1000 * sum(seconds) / len(seconds),
                          cache_tokens=stats["tokens"], cache_bytes=stats["bytes"])
    return scores


def paper(args, overrides):
    """Four stages, each a set of train.py / pretrain_vision.py runs in OUT_DIR (finished ones are skipped):
    the vision encoder; the text-only LM on it; setting (i) (every variant and seed from the LM) with the video
    models (insertion, cross, casa from the LM, on clips); setting (ii) (cross and casa on the frozen insertion
    model of the first seed). Then the scores: each run's final eval.json, and live captions of held-out clips."""
    b = BUDGETS["quick" if args.quick else "full"]
    overrides = {**(QUICK_MODEL if args.quick else {}), **overrides}
    small = ["--batch_size=4"] if args.quick else []
    where = lambda *parts: os.path.join(args.out_dir, *parts)
    vision = Job("pretrain_vision.py", where("vision"), b["vision"],
                 [f"--max_iters={b['vision']}", f"--eval_interval={b['vision']}", *small,
                  *(["--eval_scenes=8"] if args.quick else []), *[f"--{k}={v}" for k, v in overrides.items()]])
    def vqa(iters, init, tasks=",".join(COARSE_TASKS + FINE_TASKS), eval_per_task=b["eval_per_task"]):
        return [f"--init_from={init}", f"--tasks={tasks}", f"--max_iters={iters}",
                f"--eval_interval={max(1, iters // 2)}", f"--eval_per_task={eval_per_task}", "--progress=false",
                *LEARNING_RATES, *small]
    # the LM alone, on the same questions with each image described in words (scenes.as_text); no fusion layers
    lm = Job("train.py", where("lm"), b["lm"], [*vqa(b["lm"], where("vision", "ckpt.pt")), "--text_only=true",
                                                "--fusion=insertion"])
    lm_ckpt = where("lm", "ckpt.pt")
    setting_i = {(v, seed): Job("train.py", where("i", f"{v}_s{seed}"), b["vlm"],
                                [*vqa(b["vlm"], lm_ckpt), *flags, f"--seed={seed}"])
                 for v, flags in VARIANTS.items() for seed in SEEDS}
    video = {f: Job("train.py", where("video", f), b["video"],
                    [*vqa(b["video"], lm_ckpt, "video", b["clips"]), f"--fusion={f}", f"--frames={b['frames']}",
                     *([] if args.quick else ["--batch_size=8"])]) for f in FUSIONS}
    source = setting_i[("insertion", SEEDS[0])]
    adapted = {f: Job("train.py", where("ii", f), b["adapt"],
                      [*vqa(b["adapt"], os.path.join(source.out_dir, "ckpt.pt")), f"--fusion={f}",
                       "--pretrained_lr=0", f"--seed={SEEDS[0]}"]) for f in ADAPTED}
    for stage in ([vision], [lm], [*setting_i.values(), *video.values()], [*adapted.values()]):
        run_jobs(stage, args.jobs)

    results = {"budget": b, "model": overrides, "lm_on_descriptions": final_eval(lm), "setting_i": {},
               "setting_ii": {}, "captioning": {}}
    for v in VARIANTS:
        runs = {seed: final_eval(setting_i[(v, seed)]) for seed in SEEDS}
        average = lambda key: {t: sum(r[key][t] for r in runs.values()) / len(runs) for t in runs[SEEDS[0]][key]}
        results["setting_i"][v] = {"mean": summary(average("accuracy")), "blind": summary(average("blind_accuracy")),
                                   "seeds": {seed: {**r, **summary(r["accuracy"])} for seed, r in runs.items()}}
    base = summary(final_eval(source)["accuracy"])
    results["setting_ii"]["insertion"] = {"accuracy": base}
    for f, job in adapted.items():
        r = final_eval(job)
        acc = summary(r["accuracy"])
        results["setting_ii"][f] = {"accuracy": acc, "blind": summary(r["blind_accuracy"]),
                                    "drop": {t: base[t] - acc[t] for t in acc}, "train_s": r["train_s"]}
    for f, job in video.items():
        path = os.path.join(job.out_dir, "captions.json")
        if not os.path.exists(path):  # scored once; a second invocation only re-draws
            with open(path, "w") as out:
                json.dump(caption_scores(os.path.join(job.out_dir, "ckpt.pt"), b["clips"], b["frames"]), out)
        with open(path) as f_in:
            results["captioning"][f] = {**json.load(f_in), "train_s": final_eval(job)["train_s"]}
    if args.gif:  # a held-out clip (seed EVAL_SEED0), captioned by casa through sample.py itself
        run_script_for("sample.py", [f"--ckpt={os.path.join(video['casa'].out_dir, 'ckpt.pt')}",
                                     f"--video=synthetic:{scenes.EVAL_SEED0}", f"--gif={args.gif}"])
    return results


def percent(x):
    return f"{100 * x:.1f}"


def paper_tables(r):
    """Markdown: setting (i) in the shape of the paper's Table 2, setting (ii) as its Table 3, live captioning."""
    columns = [*COARSE_TASKS, *FINE_TASKS, "coarse", "fine", "mean"]
    head = lambda *names: ["| " + " | ".join(names) + " |", "|---" * len(names) + "|"]
    lines = ["### Setting (i): from a text-only LM (mean of seeds " + " and ".join(map(str, SEEDS))
             + "; each seed in brackets)", "", *head("variant", *columns)]
    for v, row in r["setting_i"].items():
        cells = [f"{percent(row['mean'][c])} ({' / '.join(percent(s[c]) for s in row['seeds'].values())})"
                 for c in columns]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append(f"| {v}, blind | " + " | ".join(percent(row["blind"][c]) for c in columns) + " |")
    lm = summary(r["lm_on_descriptions"]["accuracy"])
    lines.append("| text-only LM, reading descriptions | " + " | ".join(percent(lm[c]) for c in columns) + " |")
    lines += ["", "### Setting (ii): adapting the frozen insertion VLM (seed " + str(SEEDS[0]) + ")", ""]
    lines += head("model", *columns, "drop (points, mean)")
    for name, row in r["setting_ii"].items():
        drop = f"{100 * row['drop']['mean']:.1f}" if "drop" in row else "-"
        label = "insertion (the source)" if name == "insertion" else f"{name}, adapted"
        lines.append(f"| {label} | " + " | ".join(percent(row["accuracy"][c]) for c in columns) + f" | {drop} |")
    lines += ["", f"### Live captioning ({r['budget']['clips']} held-out clips of {r['budget']['frames']} frames, "
              "one persistent cache)", "",
              *head("fusion", "exact", "names colours and shapes", "blind exact", "blind names", "ms / frame",
                    "cached tokens after a clip", "cache KiB")]
    for f, c in r["captioning"].items():
        lines.append(f"| {f} | {percent(c['exact'])} | {percent(c['soft'])} | {percent(c['blind_exact'])} | "
                     f"{percent(c['blind_soft'])} | {c['ms_per_frame']:.1f} | {c['cache_tokens']} | "
                     f"{c['cache_bytes'] / 1024:.0f} |")
    return "\n".join(lines) + "\n"


def draw_bars(r, path, group_width=150, height=420):
    """Accuracy per task (and the means), a group per task, a bar per variant; a black line marks the best blind
    baseline of the group."""
    groups = [*COARSE_TASKS, *FINE_TASKS, "mean"]
    series = {v: row["mean"] for v, row in r["setting_i"].items()}
    series.update({f"{f} (ii)": row["accuracy"] for f, row in r["setting_ii"].items() if f != "insertion"})
    blind = {g: max(row["blind"][g] for row in r["setting_i"].values()) for g in groups}
    palette = [(214, 39, 40), (31, 119, 180), (120, 170, 220), (23, 190, 207), (148, 103, 189), (44, 160, 44),
               (255, 127, 14), (152, 223, 138)]
    left, top, h = 60, 40, height - 120
    img = Image.new("RGB", (left + group_width * len(groups) + 20, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 10), "accuracy per task (setting (i): mean of two seeds; (ii): adapted frozen insertion); "
              "black line: blind baseline", fill="black")
    for y in (0, 0.5, 1.0):
        draw.text((10, top + h - h * y - 6), f"{y:.0%}", fill="black")
        draw.line([left, top + h - h * y, img.width - 20, top + h - h * y], fill=(220, 220, 220))
    bar = (group_width - 20) / len(series)
    for g, task in enumerate(groups):
        x0 = left + g * group_width + 10
        for i, (name, acc) in enumerate(series.items()):
            draw.rectangle([x0 + i * bar, top + h - h * acc[task], x0 + (i + 1) * bar - 2, top + h],
                           fill=palette[i % len(palette)])
        y = top + h - h * blind[task]
        draw.line([x0 - 4, y, x0 + len(series) * bar + 2, y], fill="black", width=3)
        draw.text((x0, top + h + 6), task, fill="black")
    for i, name in enumerate(series):
        x, y = left + (i % 4) * 230, top + h + 30 + 18 * (i // 4)
        draw.rectangle([x, y, x + 12, y + 12], fill=palette[i % len(palette)])
        draw.text((x + 18, y), name, fill="black")
    img.save(path)


# ------------------------------------------------------------------------------------------------ main


def run_each(target, fusions, args, overrides):
    """Run target(fusion) in a fresh process per fusion (spawned: safe with CUDA, clean memory peaks)."""
    ctx = multiprocessing.get_context("spawn")
    results = {}
    for fusion in fusions:
        with ctx.Pool(1) as pool:
            results[fusion] = pool.apply(target, (fusion, args, overrides))
        print(f"{fusion}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[fusion].items()
                                       if isinstance(v, (int, float))), flush=True)
    return results


def main(argv):
    command, (options, overrides) = parse_options(argv, None, __doc__, COMMANDS)
    args = build(dict(COMMANDS[command])[f"{command} options"], options)
    model_config(overrides, data.Tokenizer())  # refuse bad model options here, not in a worker
    for option in ("json", "png", "md", "gif"):
        check_writable(getattr(args, option, ""), option)
    device = pick_device(getattr(args, "device", "cpu"))
    if command == "table":
        results = analytic_table(args.fusion_list, overrides, args.turns, args.tokens)
        print(f"{'fusion':<10} {'params':>9} {'fusion params':>14} {'FLOPs/token':>12} {'KV bytes/turn':>14}"
              f"   (after {args.turns} turns of G={args.tokens})")
        for name, r in results.items():
            print(f"{name:<10} {r['params']:>9,} {r['fusion_params']:>14,} {r['flops_per_token']:>12,} "
                  f"{r['kv_bytes_per_turn']:>14,}")
    elif command == "stream":
        results = run_each(stream_one, args.fusion_list, args, overrides)
        turn = crossover(results)
        if turn is not None:
            print(f"casa decodes faster than insertion from turn {turn}")
        if args.png:
            draw_lines([(f"{title} vs turn", {fusion: [(r["turn"], r[key]) for r in res["per_turn"]]
                                              for fusion, res in results.items()})
                        for title, key in (("time to first token (ms)", "ttft_ms"), ("cached tokens", "kv_tokens"))],
                       args.png)
        results = {"machine": machine(device), "options": asdict(args), "casa_faster_from_turn": turn, **results}
    elif command == "paper":
        start = time.time()
        results = paper(args, overrides)
        tables = paper_tables(results)
        print(tables)
        if args.md:
            with open(args.md, "w") as f:
                f.write(tables)
        if args.png:
            draw_bars(results, args.png)
        results = {"machine": machine(device), "options": asdict(args), "wall_s_this_invocation": time.time() - start,
                   **results}
    elif command == "learn":
        results = learn(args, overrides)
        print(learn_table(results))
        if args.png:
            draw_lines([(f"{task} accuracy vs training seconds", {
                fusion: [(r["vision_pretrain_s"] + e["train_s"], e["accuracy"].get(task, 0)) for e in r["curve"]]
                for fusion, r in results.items()}) for task in LEARN_TASKS], args.png, ymax=1.0)
        results = {"machine": machine(device), "options": asdict(args), **results}
    else:
        results = {"machine": machine(device), "options": asdict(args),
                   **run_each(train_one, args.fusion_list, args, overrides)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    run_script(main, "bench.py")
