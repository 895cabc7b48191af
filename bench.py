"""
Measure what the three fusions cost, side by side (untrained weights are fine for timing; experiments.py trains
models and scores them).

    python bench.py stream --turns 256 --json results/stream.json --png results/stream.png
        the paper's streaming protocol: per turn one new frame plus G greedy tokens, one persistent cache, batch 1
    python bench.py train --json results/train.json
        training throughput on multi-frame sequences: text tokens/s, peak memory, MFU against a matmul peak
        measured here
    python bench.py step --json results/step.json
        train.py's step on its own batches (the nine-task mix: a task per row, so shapes change every step), per
        fusion and per set of attention kernels: PyTorch's pick (cuDNN's included), all but cuDNN's, math only
    python bench.py table
        the analytic view: parameters, FLOPs per generated token and bytes cached per turn
    python bench.py data --json results/data.json
        feeding the training step: batches drawn per second by 0, 1, 2, 4 worker processes for each task mix, the
        demo model's step time, and the share of the training loop spent waiting for data

Options are --key=value or --key value: each command's own (see --help after the command) and the model options
of train.py (e.g. --n_embd=256). Every fusion runs in a fresh process, so the peak memory of one does not hide in
another's.
"""
import functools
import json
import multiprocessing
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import data
import figures
import scenes
from casa import FUSIONS, VLM, VLMConfig, check_fields, pick
from common import (UsageError, build, build_optimizer, check_writable, image_tokens_in_rows, machine, model_config,
                    param_counts, parse_fusions, parse_options, pick_device, pick_dtype, read_json, run_script)


@dataclass
class BenchOptions:
    fusions: str = ",".join(FUSIONS)  # comma-separated
    json: str = ""                    # write the results here

    def __post_init__(self):
        check_fields(self, at_least=self.at_least)
        self.fusion_list = parse_fusions(self.fusions)


@dataclass
class StreamOptions(BenchOptions):
    device: str = "auto"
    tokens: int = 16              # G: greedy tokens per turn
    turns: int = 256              # streaming turns
    max_text: int | None = None   # rolling text window of the cache
    png: str = ""                 # draw latency and cache size against the turn
    redraw: bool = False          # measure nothing: draw --png again from the results in --json
    at_least = dict(tokens=1, turns=1, max_text=1)


@dataclass
class TrainOptions(BenchOptions):
    device: str = "auto"
    frames: int = 8               # frames per clip
    batch_size: int = 8           # clips per step
    max_iters: int = 5            # timed steps
    at_least = dict(frames=1, batch_size=1, max_iters=1)


NINE_TASKS = "caption,color,shape,count,position,relation,reading,multi_image,video"  # the staged recipe's mix
KERNELS = {"all": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                   SDPBackend.MATH],
           "no_cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
           "math": [SDPBackend.MATH]}
ROWS = ("one", "by_length")  # bench.py step: a step's rows in one padded batch, or in parts (data.in_parts)
WARMUP_STEPS = 3  # bench.py step: untimed steps before the clock starts


@dataclass
class StepOptions(BenchOptions):
    device: str = "auto"
    dtype: str = "auto"           # auto (bf16 autocast on a GPU that has it, as train.py) | float32 | bfloat16
    tasks: str = NINE_TASKS       # train.py's --tasks
    frames: int = 8               # video: frames per clip
    batch_size: int = 32          # conversations per step, as train.py
    steps: int = 15               # timed steps, each on a batch of its own (after WARMUP_STEPS untimed ones)
    kernels: str = ",".join(KERNELS)  # attention kernels each timing may use: all, no_cudnn, math
    rows: str = ",".join(ROWS)    # how each step's rows are batched: one (padded to the longest), by_length (parts)
    at_least = dict(frames=1, batch_size=1, steps=1)

    def __post_init__(self):
        super().__post_init__()
        self.kernel_list = [k for k in self.kernels.split(",") if k]
        if not self.kernel_list or set(self.kernel_list) - set(KERNELS):
            raise ValueError(f"--kernels takes a comma-separated list of {', '.join(KERNELS)}, got {self.kernels!r}")
        self.rows_list = [r for r in self.rows.split(",") if r]
        if not self.rows_list or set(self.rows_list) - set(ROWS):
            raise ValueError(f"--rows takes a comma-separated list of {', '.join(ROWS)}, got {self.rows!r}")


@dataclass
class TableOptions(BenchOptions):
    tokens: int = 16              # G: greedy tokens per turn
    turns: int = 256              # turns of context for the FLOPs per token
    at_least = dict(tokens=1, turns=1)


MIXES = {"demo": "color,shape,count,position", "all": "all", "video": "video"}  # the task mixes train.py draws


@dataclass
class DataOptions:
    device: str = "auto"
    mixes: str = ",".join(MIXES)  # comma-separated: demo (the demo's four tasks), all (the eight), video
    workers: str = "0,1,2,4"      # worker counts to measure, comma-separated
    batch_size: int = 32          # conversations per batch, as train.py
    frames: int = 8               # video: frames per clip
    batches: int = 24             # batches drawn per measurement
    steps: int = 12               # training steps timed per worker count (the demo mix, casa)
    json: str = ""

    def __post_init__(self):
        check_fields(self, at_least=dict(batch_size=1, frames=1, batches=1, steps=1))
        self.mix_list = [m for m in self.mixes.split(",") if m]
        if not self.mix_list or set(self.mix_list) - set(MIXES):
            raise ValueError(f"--mixes takes a comma-separated list of {', '.join(MIXES)}, got {self.mixes!r}")
        try:
            self.worker_counts = [int(w) for w in self.workers.split(",")]
        except ValueError:
            raise ValueError(f"--workers takes comma-separated counts, got {self.workers!r}") from None
        if not self.worker_counts or min(self.worker_counts) < 0:
            raise ValueError(f"--workers takes counts >= 0, got {self.workers!r}")


COMMANDS = {name: [(f"{name} options", cls), ("model options (VLMConfig, as in train.py)", VLMConfig)]
            for name, cls in (("stream", StreamOptions), ("train", TrainOptions), ("step", StepOptions),
                              ("table", TableOptions), ("data", DataOptions))}


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


def draw_stream(results, path):
    """Time to first token and the cache's size against the turn, a line per fusion."""
    figures.line_panels([(title, "turn", unit, {fusion: [(r["turn"], r[key]) for r in res["per_turn"]]
                                                for fusion, res in results.items()})
                         for title, unit, key in (("time to first token", "ms", "ttft_ms"),
                                                  ("cached tokens", "tokens", "kv_tokens"))]).save(path)


# ------------------------------------------------------------------------------------------------ train


def train_one(fusion, args, overrides):
    """Training steps on streaming clips of `frames` frames (one frame + its caption per window)."""
    device = pick_device(args.device)
    model, tok = model_for(fusion, overrides, device)
    size = model.config.image_size
    convs = [scenes.make_clip(seed, size, args.frames) for seed in range(args.batch_size)]
    batch = data.collate(convs, tok, size)
    on_device = data.Batch(*batch.inputs(device), batch.last_answer, batch.tasks)  # moved once: not what is timed
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = functools.partial(train_step, model, optimizer, [on_device], device)
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
                batch.images.size(0) * model.config.n_image_tokens if fusion == "insertion" else 0)}


def train_step(model, optimizer, parts, device, autocast=None):
    """train.py's step on one micro-batch in its parts (data.in_parts), each loss weighted by its share."""
    for part in parts:
        idx, targets, images = part.inputs(device)
        with autocast or nullcontext():
            _, loss = model(idx, images, targets)
        (loss * part.weight).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def muon(model, device):
    """train.py's optimizer (Muon for the LM blocks' matrices, AdamW for the rest) at the recipes' rate."""
    return build_optimizer(list(model.named_parameters()), lambda name: 6e-3, ("blocks.",),
                           SimpleNamespace(optimizer="muon", weight_decay=0.1, lr=6e-3), device.startswith("cuda"))


# ------------------------------------------------------------------------------------------------ step


def step_one(fusion, args, overrides):
    """train.py's step, timed on its own kind of batches: a task per row, so nearly every step brings new shapes.
    Per set of attention kernels and way of batching the rows, a fresh model (seed 0) takes the same rows."""
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    autocast = None if dtype == torch.float32 else torch.autocast(device.split(":")[0], dtype=dtype)
    tok = data.Tokenizer()
    cfg = model_config({**overrides, "fusion": fusion}, tok)
    source = source_of(args, args.tasks, cfg.image_size)
    image_tokens = {"one": None, "by_length": image_tokens_in_rows(cfg, "cpu")}  # parts as a CPU step takes them
    drawn = [data.training_batch(source, tok, 0, 0, 1, i) for i in range(WARMUP_STEPS + args.steps)]
    results = {"dtype": str(dtype).removeprefix("torch.")}
    for rows in args.rows_list:
        batches = [data.in_parts(batch, tok, image_tokens[rows]) for batch in drawn]
        for kernels in args.kernel_list:
            model, _ = model_for(fusion, overrides, device)
            optimizer = muon(model, device)
            with sdpa_kernel(KERNELS[kernels]):
                for i, parts in enumerate(batches):
                    if i == WARMUP_STEPS:  # the first steps warm up: allocator, optimizer state
                        sync(device)
                        t0 = time.perf_counter()
                    train_step(model, optimizer, parts, device, autocast)
                sync(device)
            results[f"ms_per_step_{kernels}" + ("" if rows == "one" else f"_{rows}")] = \
                1000 * (time.perf_counter() - t0) / args.steps
    return results


# ------------------------------------------------------------------------------------------------ data


def source_of(args, tasks, size):
    """What train.py draws its batches from, for these tasks (train.py's data options, its defaults)."""
    options = SimpleNamespace(data="synthetic", tasks=tasks, questions=4, frames=args.frames, style="default",
                              text_only=False, batch_size=args.batch_size, eval_per_task=1, seed=0)
    return data.Conversations(options, size)


def drawing_rate(source, tok, workers, n):
    """Batches per second (wall clock) drawn by `workers` processes, their start-up left out: the first batch of
    each worker is waited for before the clock starts."""
    draw = functools.partial(data.training_batch, source, tok, 0, 0, 1)
    batches = iter(data.drawn_ahead(draw, n + max(1, workers), workers))
    for _ in range(max(1, workers)):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(n):
        next(batches)
    return n / (time.perf_counter() - t0)


def training_loop(source, tok, model, optimizer, workers, steps, device):
    """train.py's loop, timed: seconds per step, and the share of it spent waiting for the next batch."""
    draw = functools.partial(data.training_batch, source, tok, 0, 0, 1)
    image_tokens = image_tokens_in_rows(model.config, device)  # as train.py's step
    batches = iter(data.drawn_ahead(draw, steps + 1, workers, pin_memory=device.startswith("cuda")))
    waited, t0 = 0.0, None
    for i in range(steps + 1):  # the first step warms up (allocator, optimizer state, the workers' start)
        if i == 1:
            sync(device)
            waited, t0 = 0.0, time.perf_counter()
        start = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - start
        train_step(model, optimizer, data.in_parts(batch, tok, image_tokens), device)
    sync(device)
    seconds = time.perf_counter() - t0
    return {"ms_per_step": 1000 * seconds / steps, "data_wait_share": waited / seconds}


def data_bench(args, overrides, device):
    """Per task mix: ms to draw one batch on one core (process time, in-process) and batches/s with each worker
    count; then the demo's model (casa, default size) trained on the demo mix with each worker count."""
    model, tok = model_for("casa", overrides, device)
    size = model.config.image_size
    results = {"mixes": {}}
    for mix in args.mix_list:
        source = source_of(args, MIXES[mix], size)
        t0 = time.process_time()
        for i in range(args.batches):
            data.training_batch(source, tok, 0, 0, 1, i)
        row = {"ms_per_batch_one_core": 1000 * (time.process_time() - t0) / args.batches,
               "batches_per_s": {w: drawing_rate(source, tok, w, args.batches) for w in args.worker_counts}}
        results["mixes"][mix] = row
        print(f"{mix}: {row['ms_per_batch_one_core']:.1f} ms a batch on one core; batches/s by workers: "
              + ", ".join(f"{w}: {r:.1f}" for w, r in row["batches_per_s"].items()), flush=True)
    optimizer = muon(model, device)
    source = source_of(args, MIXES["demo"], size)
    results["demo_step"] = {w: training_loop(source, tok, model, optimizer, w, args.steps, device)
                            for w in args.worker_counts}
    for w, r in results["demo_step"].items():
        print(f"demo step with {w} worker(s): {r['ms_per_step']:.0f} ms, {r['data_wait_share']:.1%} of it waiting "
              "for data", flush=True)
    return results


# ------------------------------------------------------------------------------------------------ table


def analytic_table(fusions, overrides, turns, tokens):
    """Per fusion, from the config alone: parameters, FLOPs per generated token after `turns` streaming turns,
    and bytes added to the cache per turn (fp32 keys and values)."""
    tok = data.Tokenizer()
    rows = {}
    for fusion in fusions:
        cfg = model_config({**overrides, "fusion": fusion}, tok)
        model = VLM(cfg)
        counts = param_counts(model)
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
    redraw = getattr(args, "redraw", False)
    check_writable(args.json if not redraw else "", "json")
    check_writable(getattr(args, "png", ""), "png")
    device = pick_device(getattr(args, "device", "cpu"))
    if command == "data":
        results = {"machine": machine(device), "options": asdict(args), **data_bench(args, overrides, device)}
    elif command == "table":
        results = analytic_table(args.fusion_list, overrides, args.turns, args.tokens)
        print(f"{'fusion':<10} {'params':>9} {'fusion params':>14} {'FLOPs/token':>12} {'KV bytes/turn':>14}"
              f"   (after {args.turns} turns of G={args.tokens})")
        for name, r in results.items():
            print(f"{name:<10} {r['params']:>9,} {r['fusion_params']:>14,} {r['flops_per_token']:>12,} "
                  f"{r['kv_bytes_per_turn']:>14,}")
    elif command == "stream" and redraw:
        if not args.png:
            raise UsageError("--redraw draws --png again: give it")
        draw_stream({k: v for k, v in read_json(args.json).items() if k in FUSIONS}, args.png)
        return
    elif command == "stream":
        results = run_each(stream_one, args.fusion_list, args, overrides)
        turn = crossover(results)
        if turn is not None:
            print(f"casa decodes faster than insertion from turn {turn}")
        if args.png:
            draw_stream(results, args.png)
        results = {"machine": machine(device), "options": asdict(args), "casa_faster_from_turn": turn, **results}
    else:
        target = train_one if command == "train" else step_one
        results = {"machine": machine(device), "options": asdict(args),
                   **run_each(target, args.fusion_list, args, overrides)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    run_script(main, "bench.py")
