"""
common.py: what every casa script stands on, so that the scripts are peers and none imports another.

    UsageError, run_script        bad input is one line on stderr and exit 2; Ctrl-C and SIGTERM end quietly
    parse_options                 the one option parser: --key=value or --key value, typed from the run's dataclasses
    parse_fusions, read_json      the --fusions list and the --json of an earlier run, for the measuring scripts
    machine                       what a measurement ran on
    pick_device, pick_dtype       device and precision
    param_counts                  a model's parameters per part
    evaluate, scores              validation loss and exact-match accuracy per task (training's evals); a
                                  checkpoint's held-out, shifted, blind or validation accuracy (experiments.py)
    write_atomic, save_checkpoint, load_checkpoint, load_model, build_model, resume_checkpoint
                                  checkpoints: atomic writes that an interrupt waits for, checked reads (the
                                  memory a model needs checked before it is built), one resume path
    build_optimizer               the one optimizer of both training scripts (AdamW, or Muon + AdamW)
    progress_bar                  a bar on a terminal, nothing in a log file
    lock_out_dir, check_writable  refuse a busy out_dir or an output path that cannot be written, before the work
    caption_stream                live captioning: frames through one persistent cache
    caption_scores                live captions of held-out clips scored frame by frame (experiments.py captions)
"""
import difflib
import fcntl
import json
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import types
from contextlib import contextmanager, nullcontext
from dataclasses import fields

import torch
from PIL import Image
from tqdm import tqdm

import data
import scenes
from casa import FUSIONS, VLM, VLMConfig

# the model options a script may set; vocab_size and image_token_id come from the tokenizer
MODEL_KEYS = [f.name for f in fields(VLMConfig) if f.name not in ("vocab_size", "image_token_id")]


class UsageError(Exception):
    """Bad input the user can fix: printed as one line, exit code 2."""


def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def run_script(main, name):
    """Run a script's main(argv): a UsageError or DataError is one line and exit 2; Ctrl-C (exit 130) and SIGTERM
    (what schedulers and `docker stop` send; exit 143) end with one line, the last checkpoint intact. Never a
    traceback for these."""
    def terminated(signum, frame):
        raise KeyboardInterrupt(signum)
    signal.signal(signal.SIGTERM, terminated)
    try:
        main(sys.argv[1:])
    except (UsageError, data.DataError) as e:
        print(f"{name}: error: {first_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        signum = e.args[0] if e.args else signal.SIGINT
        print(f"{name}: {'terminated' if signum == signal.SIGTERM else 'interrupted'} "
              "(the last checkpoint is intact)", file=sys.stderr)
        sys.exit(128 + signum)
    except BrokenPipeError:  # `python sample.py ... | head` ends quietly
        sys.stderr.close()
        sys.exit(0)


# ------------------------------------------------------------------------------------------------ options


def option_kind(f):
    """(parse one value, repeatable?) for a dataclass field: int, float, str, bool, `X | None` or list[X]."""
    kind = f.type
    if isinstance(kind, types.GenericAlias) and kind.__origin__ is list:
        return kind.__args__[0], True
    if isinstance(kind, types.UnionType):
        return next(k for k in kind.__args__ if k is not type(None)), False
    return kind, False


def parse_value(key, text, kind):
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--{key} expects true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"--{key} expects {'a number' if kind is float else kind.__name__}, got {text!r}") from None


def parse_options(argv, configs, doc, commands=None):
    """Options for a script: `configs` are the dataclasses (with a title each) whose fields are its options, as
    [(title, cls), ...]. Accepts --key=value and --key value (a bool alone means true), types them from the fields,
    suggests the closest name for a typo and prints the doc and every option for --help. With `commands`
    (name -> configs), the first argument picks one. Returns (command or None, [dict of the options given, per
    config])."""
    command = None
    if commands is not None:
        if not argv or argv[0] in ("-h", "--help"):
            print(doc.strip() + "\n\ncommands: " + ", ".join(commands))
            sys.exit(0 if argv else 2)
        command, argv = argv[0], argv[1:]
        if command not in commands:
            close = difflib.get_close_matches(command, list(commands), n=1)
            raise UsageError(f"unknown command {command!r}; commands are {', '.join(commands)}"
                             + (f" (did you mean {close[0]}?)" if close else ""))
        configs = commands[command]
    owner = {f.name: (i, f) for i, (_, cls) in enumerate(configs) for f in fields(cls)
             if cls is not VLMConfig or f.name in MODEL_KEYS}
    given = [{} for _ in configs]
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            print(usage(configs, doc))
            sys.exit(0)
        if not arg.startswith("--"):
            raise UsageError(f"expected an option --key=value or --key value, got {arg!r} (see --help)")
        key, eq, text = arg[2:].partition("=")
        if key not in owner:
            close = difflib.get_close_matches(key, list(owner), n=1)
            raise UsageError(f"unknown option --{key}" + (f"; did you mean --{close[0]}?" if close else "")
                             + " (see --help)")
        which, f = owner[key]
        kind, repeatable = option_kind(f)
        if not eq:
            if kind is bool and (i == len(argv) or argv[i].startswith("--")):
                text = "true"
            elif i == len(argv):
                raise UsageError(f"--{key} needs a value")
            else:
                text, i = argv[i], i + 1
        value = parse_value(key, text, kind)
        if repeatable:
            given[which].setdefault(key, []).append(value)
        else:
            given[which][key] = value
    return command, given


def usage(configs, doc):
    lines = [doc.strip()]
    for title, cls in configs:
        lines += ["", f"{title}:"]
        lines += [f"  --{f.name}={default_of(f)}" for f in fields(cls) if cls is not VLMConfig or f.name in MODEL_KEYS]
    return "\n".join(lines)


def default_of(f):
    return "(repeatable)" if option_kind(f)[1] else f.default


def build(cls, options, where=""):
    """cls(**options), with unknown names and the config's own checks (ValueError) as one-line UsageErrors.
    `where` names the source of the options when they did not come from the command line."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"{where}unknown option {unknown[0]!r}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}{first_line(e)}") from None


def model_config(options, tok, where=""):
    """The VLMConfig of these model options, with the vocabulary of this tokenizer."""
    return build(VLMConfig, {**options, "vocab_size": tok.vocab_size, "image_token_id": tok.image_id}, where)


def require_unchanged(model_overrides, saved):
    """Resuming: model options given now must match the checkpoint's (its weights have that shape)."""
    changed = [k for k, v in model_overrides.items() if saved.get(k) != v]
    if changed:
        raise UsageError(f"--{changed[0]} cannot change when resuming (the checkpoint has {saved.get(changed[0])})")


def lr_factor(it, cfg):
    """Linear warmup over cfg.warmup_iters, then cosine decay to cfg.min_lr_ratio at cfg.max_iters."""
    if it < cfg.warmup_iters:
        return (it + 1) / cfg.warmup_iters
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Optimizers:
    """Several torch optimizers stepped, scheduled and saved as one: param_groups lists all of their groups."""

    def __init__(self, optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state):
        states = state.get("optimizers") if isinstance(state, dict) else None
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            raise ValueError("the saved optimizers are not these")
        for opt, saved in zip(self.optimizers, states):
            opt.load_state_dict(saved)


def build_optimizer(named, lr_of, muon_prefixes, cfg, fused=False):
    """The optimizer of both training scripts, over `named` (name, parameter) pairs: a param group per learning
    rate (lr_of(name)) and per kind (weight matrices decay by cfg.weight_decay; norms, gains and biases do not).
    With cfg.optimizer == "muon", the weight matrices whose names start with one of muon_prefixes go to Muon, which
    orthogonalises each matrix's momentum (Newton-Schulz) and is scaled to AdamW's update size
    (match_rms_adamw), so the same learning rates apply; AdamW takes everything else."""
    groups = {}
    for name, p in named:
        lr, decayed = lr_of(name), p.dim() >= 2
        muon = cfg.optimizer == "muon" and p.dim() == 2 and name.startswith(muon_prefixes)
        groups.setdefault((muon, lr, decayed), {"params": [], "base_lr": lr, "weight_decay":
                          cfg.weight_decay if decayed else 0.0})["params"].append(p)
    adamw = [g for (muon, *_), g in groups.items() if not muon]
    muon = [g for (muon, *_), g in groups.items() if muon]
    optimizers = [torch.optim.AdamW(adamw, lr=cfg.lr, betas=(0.9, 0.95), fused=fused)] if adamw else []
    if muon:
        optimizers.append(torch.optim.Muon(muon, lr=cfg.lr, adjust_lr_fn="match_rms_adamw"))
    return Optimizers(optimizers)


def progress_bar(iterable, enabled, **kwargs):
    """A tqdm bar where someone watches (a terminal); redirected to a file (CI, nohup, `make demo > log`), no bar:
    its every refresh would be a line. The scripts print one line per eval either way."""
    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, **kwargs)


def parse_fusions(text):
    """A --fusions option: a comma-separated list of casa.FUSIONS."""
    names = [name for name in text.split(",") if name]
    if not names or set(names) - set(FUSIONS):
        raise ValueError(f"--fusions takes a comma-separated list of {', '.join(FUSIONS)}, got {text!r}")
    return names


def read_json(path):
    """The results an earlier run wrote to --json (to draw them again)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--json={path}: cannot read results from it ({e})") from None


# ------------------------------------------------------------------------------------------------ system


def pick_device(name):
    """auto = cuda, else mps, else cpu. A device this machine does not have is refused, with the reason.
    On CUDA, attention runs without cuDNN's kernels: they build an execution plan for every new shape, and shapes
    here change nearly every step (a task per row, a growing cache), which made a training step 2-12x slower on an
    H200 (results/gpu.md, `bench.py step`). PyTorch's flash and memory-efficient kernels need no plan."""
    device = checked_device(name)
    if device.startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    return device


def checked_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device expects auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device={name}: this machine has no CUDA GPU (torch {torch.__version__}); "
                         "use --device=cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device={name}: MPS is not available here; use --device=cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device expects auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return name


def machine(device="cpu"):
    """What a measurement ran on, stored beside its results."""
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def pick_dtype(name, device):
    """bf16 autocast only where the hardware does it natively; fp16 (with a grad scaler) on older CUDA GPUs;
    fp32 on CPU and MPS, where autocast buys little for models this small."""
    if name != "auto":
        if name not in ("float32", "bfloat16", "float16"):
            raise UsageError(f"--dtype expects auto, float32, bfloat16 or float16, got {name!r}")
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def lock_out_dir(out_dir):
    """Create out_dir and hold an exclusive lock on it for this process's life: a second run into the same folder
    is refused at once, instead of the two overwriting each other's checkpoint. Returns the open lock file."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, ".lock"), "w")
    except OSError as e:
        raise UsageError(f"cannot use --out_dir={out_dir!r}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UsageError(f"--out_dir={out_dir!r} is in use by another run (wait for it, or pick another out_dir)") \
            from None
    return lock


def check_writable(path, option):
    """Refuse, before any work, an output path that cannot be written: a missing folder, a folder, no permission."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--{option}={path}: is a directory")
    if not os.path.isdir(folder):
        raise UsageError(f"--{option}={path}: no such directory {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"--{option}={path}: not writable")


# ------------------------------------------------------------------------------------------------ checkpoints


@contextmanager
def interrupts_wait():
    """Ctrl-C and SIGTERM wait until the block ends, then take effect as usual: a file being written is never left
    half-written, and the interrupt never lands inside torch's serialiser (where it would surface as a traceback
    instead of the one-line exit). Signal handlers belong to the main thread; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])  # now, to the handler it was meant for


def write_atomic(path, write):
    """write(f) into a temporary file next to path, then rename it over path: a crash never leaves half a file,
    and an interrupt waits for the rename."""
    with interrupts_wait():
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def save_checkpoint(path, state):
    write_atomic(path, lambda f: torch.save(state, f))


def save_json(path, obj):
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def load_checkpoint(path, device="cpu", needs=()):
    """A casa checkpoint as a dict, read with weights_only (no code runs). `needs`: keys the caller relies on
    beyond model, model_config and tokenizer (e.g. iter and optimizer to resume)."""
    if not os.path.isfile(path):
        raise UsageError(f"no checkpoint at {path}")
    if os.path.getsize(path) == 0:
        raise UsageError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch reports unreadable files with many exception types
        raise UsageError(f"cannot read checkpoint {path}: {first_line(e)}") from None
    missing = [k for k in ("model", "model_config", "tokenizer", *needs) if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UsageError(f"{path} is not a casa checkpoint of this kind (it has no {missing[0]})")
    if not isinstance(ckpt["model_config"], dict) or not isinstance(ckpt["model"], dict):
        raise UsageError(f"{path} is not a casa checkpoint (its model or model_config is not a dict)")
    return ckpt


def available_memory():
    """Bytes of memory this process could still get (MemAvailable on Linux; all of it elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(cfg, where=""):
    """Refuse, before anything is allocated, a model whose weights alone exceed the memory left: it is built on the
    meta device (shapes, no storage), so a config that asks for a 128 GB embedding costs nothing to measure."""
    with torch.device("meta"):
        weights = sum(p.numel() * p.element_size() for p in VLM(cfg).parameters())
    free = available_memory()
    if weights > free:
        raise UsageError(f"{where}the model needs {weights / 2**30:,.1f} GiB for its weights alone; "
                         f"this machine has {free / 2**30:.1f} GiB free")


def build_model(ckpt, path, overrides=None):
    """The tokenizer and an untrained VLM of the checkpoint's config (with `overrides` on top), checked."""
    where = f"{path}: "
    try:
        tok = data.Tokenizer.from_state(ckpt["tokenizer"])
    except (data.DataError, KeyError, TypeError) as e:
        raise UsageError(f"{where}unusable tokenizer ({first_line(e)})") from None
    saved = {k: v for k, v in ckpt["model_config"].items() if k not in ("vocab_size", "image_token_id")}
    cfg = model_config({**saved, **(overrides or {})}, tok, where)
    if (ckpt["model_config"].get("vocab_size", cfg.vocab_size), ckpt["model_config"].get(
            "image_token_id", cfg.image_token_id)) != (cfg.vocab_size, cfg.image_token_id):
        raise UsageError(f"{where}its model_config does not match its tokenizer (vocab_size, image_token_id)")
    check_fits(cfg, where)
    return VLM(cfg), tok


def load_weights(model, state_dict, path, strict=True):
    """Load weights, a mismatch (other shapes, missing or extra tensors) as one line."""
    try:
        model.load_state_dict(state_dict, strict=strict)
    except (RuntimeError, TypeError, ValueError, AttributeError) as e:
        message = " ".join(str(e).split())
        raise UsageError(f"{path}: its weights do not fit its model_config ({message[:160]})") from None


def load_model(path, device):
    """(model in eval mode on device, tokenizer, checkpoint) from a train.py checkpoint."""
    ckpt = load_checkpoint(path, device)
    model, tok = build_model(ckpt, path)
    load_weights(model, ckpt["model"], path)
    return model.to(device).eval(), tok, ckpt


@torch.no_grad()
def evaluate(model, batches, device, autocast):
    """Validation loss and exact-match accuracy per task. Exact match under teacher forcing (every token of the
    last answer, its end token included, is the argmax) is exactly what greedy decoding would produce."""
    model.eval()
    losses, hits, totals = [], {}, {}
    for batch in batches:
        idx, targets, images = batch.inputs(device)
        with autocast:
            logits, loss = model(idx, images, targets)
        losses.append(loss.item())
        wrong = (model.text_only(logits).argmax(-1) != targets) & batch.last_answer.to(device)
        for task, ok in zip(batch.tasks, (~wrong.any(1)).tolist()):
            hits[task] = hits.get(task, 0) + ok
            totals[task] = totals.get(task, 0) + 1
    model.train()
    return sum(losses) / max(1, len(losses)), {t: hits[t] / totals[t] for t in sorted(totals)}


def scores(ckpt_path, n_per_task, looks=("default",), blind=False, seed0=scenes.EVAL_SEED0):
    """A checkpoint's exact match per task (evaluate) on n_per_task conversations of each task it trained on (clips
    of its training length), {look: {task: accuracy}} for each look, and with blind also "blind": on gray images."""
    model, tok, ckpt = load_model(ckpt_path, "cpu")
    size, cfg = model.config.image_size, ckpt["train_config"]

    def accuracy(style, gray=False):
        convs = scenes.eval_conversations(n_per_task, size, scenes.parse_tasks(cfg["tasks"]), style, cfg["frames"],
                                          seed0=seed0)
        convs = [scenes.as_text(c) for c in convs] if cfg["text_only"] else convs  # as train.py's eval
        return evaluate(model, data.eval_batches(convs, tok, size, gray), "cpu", nullcontext())[1]
    return {look: accuracy(look) for look in looks} | ({"blind": accuracy("default", gray=True)} if blind else {})


def image_tokens_in_rows(cfg, device):
    """data.in_parts's image_tokens for this model on this device. On a CPU a micro-batch comes in parts by
    length (less padding, the same gradient), an image counting in its row what it adds to the text stream (its
    tokens with insertion; the others nothing beyond its marker). On a GPU None: one part, as measured there, where
    the step is bound by launching kernels rather than by arithmetic (results/gpu.md)."""
    if device.startswith("cuda"):
        return None
    return cfg.n_image_tokens if cfg.fusion == "insertion" else 0


def param_counts(model):
    """A VLM's parameters per part; 'fusion': what the fusion layers add (only norms when they share
    weights). Tied weights are listed once."""
    counts = dict.fromkeys(("vision", "projector", "language_model", "fusion"), 0)
    for name, p in model.named_parameters():
        if name.startswith("vision.projector"):
            part = "projector"
        elif name.startswith("vision."):
            part = "vision"
        elif any(piece in name for piece in (".cross.", ".norm2.", ".gate")):
            part = "fusion"
        else:
            part = "language_model"
        counts[part] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def resume_checkpoint(out_dir, cls, options, model_options, needs=()):
    """Resuming a training script: (its options, the checkpoint out_dir/ckpt.pt, the iteration it reached). The
    options are the saved ones but for those given now; model options given now must match the saved ones (the
    weights have that shape). needs: what else the script's checkpoints hold and it relies on."""
    path = os.path.join(out_dir, "ckpt.pt")
    ckpt = load_checkpoint(path, needs=("iter", "train_config", "optimizer", *needs))
    if not isinstance(ckpt["train_config"], dict):
        raise UsageError(f"{path}: its train_config is not a dict")
    require_unchanged(model_options, ckpt["model_config"])
    cfg = build(cls, {**ckpt["train_config"], **options, "init_from": "resume"}, f"{path}: ")
    if not isinstance(ckpt["iter"], int) or ckpt["iter"] < 0:
        raise UsageError(f"{path}: its iter is {ckpt['iter']!r}, not an iteration count")
    return cfg, ckpt, ckpt["iter"]


def open_log(path, start_iter):
    """log.jsonl, line-buffered, for appending. Resumed at start_iter, the lines of later iterations (written after
    the checkpoint the run resumes from) are dropped first, so that no iteration is logged twice."""
    if start_iter and os.path.exists(path):
        with open(path) as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("iter", 0) <= start_iter]
        with open(path, "w") as f:
            f.writelines(kept)
    return open(path, "a" if start_iter else "w", buffering=1)


def load_optimizer_state(optimizer, ckpt, path, hint=""):
    """Resuming: the optimizer's saved state, or one line saying it does not fit (and `hint`, what would)."""
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: its optimizer state does not fit ({hint or type(e).__name__})") from None


@torch.no_grad()
def caption_stream(model, tok, frames, device, max_new_tokens=60, max_text=None, **sampling):
    """Live captioning (sample.py --video, experiments.py paper and captions): the frames go through one persistent
    cache, each one encoded and appended after its marker; the model writes a caption until its stop token, and
    that stop token stays in the cache as the frame's boundary. Yields (caption, seconds for the frame, the cache)
    per frame. sampling: temperature, top_k, generator (as for VLM.generate)."""
    cache = model.new_cache(max_text=max_text)
    marker, stop = torch.tensor([[tok.image_id]], device=device), torch.tensor([[tok.eos_id]], device=device)
    for frame in frames:
        start = time.perf_counter()
        out = model.generate(marker, data.to_tensor(frame)[None].to(device), max_new_tokens, stop_token=tok.eos_id,
                             cache=cache, **sampling)
        if out[0, -1] != tok.eos_id:  # cut off by max_new_tokens: still close the frame in the cache
            model(stop, cache=cache)
        yield tok.decode([i for i in out[0].tolist() if i != tok.eos_id]), time.perf_counter() - start, cache


def named(caption):
    """The colours and shapes a caption names: the softer score asks only for these."""
    return sorted(w for w in caption.split() if w in scenes.COLORS or w in scenes.SHAPES)


CAPTION_KINDS = {"moves": " moves to the ", "appears": " appears at the ", "disappears": " disappears",
                 "turns": " turns "}  # the one change a caption after frame 0 names (scenes._video_step)
CACHE_AT = (8, 16, 32, 64)  # frames after which the cache is weighed (and after a clip's last)


def caption_kind(caption):
    """What a reference caption of scenes.make_clip says: one change (CAPTION_KINDS), or the frame in full."""
    return next((kind for kind, words in CAPTION_KINDS.items() if words in caption), "full")


def caption_scores(ckpt_path, n_clips, frames, max_text=None, style="default", seed0=scenes.EVAL_SEED0):
    """Held-out clips (drawn in `style`) streamed through the live-captioning path, frame by frame, keeping the
    latest max_text text tokens: exact match, overall and per kind of caption, and the share of frames whose
    caption names the right colours and shapes, for the real frames and for blank ones (the blind baseline);
    milliseconds per frame, the cache after the last clip and its most bytes over the clips at CACHE_AT.
    seed0=scenes.VALIDATION_SEED0: the validation clips instead, for choices that keep the held-out clips unseen."""
    model, tok, _ = load_model(ckpt_path, "cpu")
    size, result = model.config.image_size, {"fusion": model.config.fusion}
    clips = [scenes.make_clip(seed0 + i, size, frames, style) for i in range(n_clips)]
    gray = Image.new("RGB", (size, size), data.GRAY)
    for blind in (False, True):
        rows, bytes_at = [], {}  # rows: (kind, exact, names right, seconds) per frame
        for clip in clips:
            shown = [gray if blind else turn.images[0] for turn in clip.turns]
            stream = caption_stream(model, tok, shown, "cpu", 24, max_text)
            for f, (turn, (said, s, cache)) in enumerate(zip(clip.turns, stream), 1):
                rows.append((caption_kind(turn.answer), said == turn.answer, named(said) == named(turn.answer), s))
                if f in CACHE_AT or f == frames:
                    bytes_at[f] = max(bytes_at.get(f, 0), cache.stats()["bytes"])
        share = lambda col, of: sum(r[col] for r in of) / len(of)
        prefix = "blind_" if blind else ""
        result.update({f"{prefix}exact": share(1, rows), f"{prefix}soft": share(2, rows)})
        if not blind:
            stats, kinds = cache.stats(), {k: [r for r in rows if r[0] == k] for k in ("full", *CAPTION_KINDS)}
            result.update(frames=len(rows), ms_per_frame=1000 * sum(r[3] for r in rows) / len(rows),
                          cache_tokens=stats["tokens"], cache_bytes=stats["bytes"], cache_bytes_at=bytes_at,
                          by_kind={k: {"frames": len(of), "exact": share(1, of) if of else None}
                                   for k, of in kinds.items()})
    return result
