"""
Train a tiny vision-language model (see casa.py) on procedural scenes, or on your own folder of images.

    python train.py                                   # the default CASA model, a few minutes on a laptop CPU
    python train.py --fusion=insertion --out_dir=out-insertion
    python train.py --init_from=out-vision/ckpt.pt  # on a vision encoder from pretrain_vision.py
    python train.py --init_from=out-insertion/ckpt.pt --fusion=casa --pretrained_lr=0   # adapt a frozen VLM
    python train.py --init_from=out-vision/ckpt.pt --text_only --out_dir=out-lm   # the LM alone, on scenes in words
    python train.py --init_from=resume --out_dir=out  # carry on exactly where a run stopped
    torchrun --standalone --nproc_per_node=2 train.py --device=cpu   # DDP (gloo on CPU, nccl on GPUs)
    python train.py --help                            # every option and its default

Options are --key=value or --key value, checked against the types and ranges of TrainConfig and VLMConfig below.
"""
import functools
import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import scenes
from casa import VLM, VLMConfig, check_fields
from common import (UsageError, build, build_model, build_optimizer, check_fits, evaluate, image_tokens_in_rows,
                    load_checkpoint, load_optimizer_state, load_weights, lock_out_dir, lr_factor, model_config,
                    open_log, param_counts, parse_options, pick_device, pick_dtype, progress_bar,
                    resume_checkpoint, run_script, save_checkpoint, save_json)


@dataclass
class TrainConfig:
    out_dir: str = "out"
    init_from: str = "scratch"  # scratch | resume (from out_dir) | path/to/ckpt.pt (another model or an encoder)
    data: str = "synthetic"     # synthetic | a folder holding data.jsonl and its images
    tasks: str = "all"          # synthetic tasks to train on, comma-separated (see scenes.TASKS, scenes.VIDEO_TASK)
    questions: int = 4          # synthetic: up to this many questions about each single-scene image (eval asks 1)
    frames: int | None = None   # video: frames per clip (default: 8 to 64, drawn per clip)
    style: str = "default"      # synthetic: the look of training scenes: default, or varied (each scene its own
                                # camera, shades and ink: scenes.STYLES); held-out scenes stay default and shifted
    text_only: bool = False     # pretrain the language model alone: each image replaced by its description in words
    # optimisation
    batch_size: int = 32
    grad_accum: int = 1         # micro-batches per step, per process: tokens per step = batch * accum * processes
    max_iters: int = 1500
    lr: float = 3e-3            # new weights (everything, from scratch; the fusion layers when adapting)
    vision_lr: float = 5e-4     # a new vision encoder (5e-4 and 2e-3 measured alike since LayerScale: README)
    pretrained_lr: float = 2e-4  # weights that came from --init_from=PATH (0 freezes them)
    pretrained_vision_lr: float | None = None  # of those, the vision encoder's (default: --pretrained_lr): an
                                # encoder pretrained on labels and an LM pretrained on text may want different rates
    min_lr_ratio: float = 0.1   # cosine decay ends at lr * min_lr_ratio
    warmup_iters: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    optimizer: str = "muon"     # muon (the LM blocks' matrices; AdamW for the rest) | adamw (everything)
    # evaluation and logging
    eval_interval: int = 250
    eval_per_task: int = 64     # held-out conversations per task
    log_interval: int = 10      # read the loss back (a wait for the device) and log it every this many steps
    seed: int = 1337
    # system
    device: str = "auto"        # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"         # auto | float32 | bfloat16 | float16
    compile: bool = False
    workers: int | None = None  # processes drawing batches ahead of the step (default: cores - 2, at most 8;
                                # 0: drawn here, between steps)
    progress: bool = True       # a progress bar, when the output is a terminal

    def __post_init__(self):  # nonsense is refused before anything trains (NaN or negative rates, zero sizes)
        check_fields(self, at_least=dict(batch_size=1, grad_accum=1, max_iters=1, eval_interval=1, eval_per_task=1,
                                         log_interval=1, workers=0,
                                         questions=1, frames=1, lr=0.0, vision_lr=0.0, pretrained_lr=0.0,
                                         pretrained_vision_lr=0.0,
                                         min_lr_ratio=0.0, warmup_iters=0, weight_decay=0.0), above=dict(grad_clip=0.0))
        if self.optimizer not in ("muon", "adamw"):
            raise ValueError(f"optimizer must be muon or adamw, got {self.optimizer!r}")
        scenes.check_style(self.style, training=True)


def unwrapped(model):
    """The plain VLM behind DDP and torch.compile wrappers, so checkpoints carry no '_orig_mod.' or 'module.'."""
    model = model.module if isinstance(model, DDP) else model
    return getattr(model, "_orig_mod", model)


def make_optimizer(model, new_names, cfg, fused):
    """A learning rate per origin of a weight: cfg.lr for new weights, cfg.vision_lr for a new vision encoder,
    cfg.pretrained_lr for weights that came from --init_from (0 freezes them: adapting a frozen model), or
    cfg.pretrained_vision_lr, when set, for the vision encoder among them. With --optimizer=muon, Muon trains the
    weight matrices of the LM blocks (common.build_optimizer)."""
    def lr_of(name):
        vision = name.startswith("vision.")
        if name not in new_names:
            return cfg.pretrained_vision_lr if vision and cfg.pretrained_vision_lr is not None else cfg.pretrained_lr
        return cfg.vision_lr if vision else cfg.lr
    for name, p in model.named_parameters():
        p.requires_grad_(lr_of(name) > 0 or name in new_names)
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trained:
        raise UsageError("nothing to train: every weight came from --init_from and --pretrained_lr=0 freezes them")
    return build_optimizer(trained, lr_of, ("blocks.",), cfg, fused)


# ------------------------------------------------------------------------------------------------ reporting


def accuracy_table(result):
    """accuracy, blind baseline and (synthetic data) accuracy on shifted scenes, a row per task."""
    shifted = result.get("shifted_accuracy", {})
    rows = [f"{'task':<12} {'accuracy':>9} {'blind':>7}" + (f" {'shifted':>8}" if shifted else "")]
    rows += [f"{task:<12} {acc:>9.1%} {result['blind_accuracy'][task]:>7.1%}"
             + (f" {shifted[task]:>8.1%}" if shifted else "") for task, acc in result["accuracy"].items()]
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ main


def main(argv):
    _, (train_options, model_options) = parse_options(argv, [("training options (TrainConfig)", TrainConfig),
                                                             ("model options (VLMConfig)", VLMConfig)], __doc__)
    cfg, ckpt, start_iter = build(TrainConfig, train_options), None, 0
    if cfg.init_from == "resume":  # carry on with the options saved in the checkpoint, but for those given now
        cfg, ckpt, start_iter = resume_checkpoint(cfg.out_dir, TrainConfig, train_options, model_options,
                                                  needs=("scaler", "rng"))
    ddp = "RANK" in os.environ
    if ddp:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        device = pick_device(cfg.device)
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    else:
        rank, world, device = 0, 1, pick_device(cfg.device)
    master = rank == 0
    dtype = pick_dtype(cfg.dtype, device)
    device_type = device.split(":")[0]
    autocast = nullcontext() if dtype == torch.float32 else torch.autocast(device_type, dtype=dtype)
    torch.manual_seed(cfg.seed)

    # ---- model, tokenizer, optimizer state: from scratch, from another model, or resumed
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    new_names = None
    if cfg.init_from == "scratch":
        tok = data.Tokenizer()
        model_cfg = model_config(model_options, tok)
        check_fits(model_cfg)
        model = VLM(model_cfg)
    else:
        path = ckpt_path if cfg.init_from == "resume" else cfg.init_from
        ckpt = ckpt or load_checkpoint(path)
        model, tok = build_model(ckpt, path, model_options)
        model_cfg = model.config
        if cfg.init_from == "resume":
            load_weights(model, ckpt["model"], path)
            if ckpt.get("pretrained"):  # an adapted model: its weights from --init_from=PATH keep their own LR
                new_names = {name for name, _ in model.named_parameters()} - set(ckpt["pretrained"])
        else:
            try:
                new_names = set(model.load_pretrained(ckpt["model"]))
            except (ValueError, AttributeError) as e:  # e.g. the two models' sizes differ
                raise UsageError(f"{path}: {e}") from None
    model.to(device)
    if new_names is None:  # trained from scratch (or resuming that): every weight is new
        new_names = {name for name, _ in model.named_parameters()}
    optimizer = make_optimizer(model, new_names, cfg, fused=device_type == "cuda")
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    if cfg.init_from == "resume":
        run = ckpt["train_config"]  # the options of the run that wrote it
        # other parameter groups: frozen (--pretrained_lr=0) then, trainable now, or the reverse
        vision_lr = run.get("vision_lr", run.get("lr"))
        load_optimizer_state(optimizer, ckpt, ckpt_path, "resume with the --pretrained_lr of the run that wrote it "
                             f"({run.get('pretrained_lr')}), its --pretrained_vision_lr "
                             f"({run.get('pretrained_vision_lr')}) and its --vision_lr ({vision_lr})")
        try:
            scaler.load_state_dict(ckpt["scaler"])
            random.setstate(ckpt["rng"]["python"])
            torch.set_rng_state(ckpt["rng"]["torch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UsageError(f"{ckpt_path}: unusable scaler or random state ({type(e).__name__})") from None
    # training time (evaluation excluded; data_s: the part the loop waited for batches, or drew them itself with
    # --workers=0) and text tokens so far: what time-to-accuracy is measured in
    spent = {"train_s": 0.0, "data_s": 0.0, "text_tokens": 0}
    if cfg.init_from == "resume" and isinstance(ckpt.get("spent"), dict):
        spent.update(ckpt["spent"])
    ckpt = None  # free memory

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    eval_model = model  # evaluation runs on rank 0 only, so never through DDP's collective calls
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    workers = data.default_workers() if cfg.workers is None else cfg.workers
    source = data.Conversations(cfg, model_cfg.image_size, workers)
    batches = functools.partial(data.eval_batches, tok=tok, size=model_cfg.image_size)
    eval_batches, blind_batches = batches(source.held_out), batches(source.held_out, blank_images=True)
    shifted_batches = batches(source.shifted)
    lock = lock_out_dir(cfg.out_dir) if master else None  # noqa: F841 (after every check; held until the end)
    if master:
        counts = param_counts(raw_model)
        print(f"{model_cfg.fusion} model, {counts['total'] / 1e6:.2f}M parameters "
              f"({', '.join(f'{k} {v / 1e6:.2f}M' for k, v in counts.items() if k != 'total')}); "
              f"device {device}, {str(dtype).removeprefix('torch.')}, {world} process(es)")
        if source.dropped:
            print(f"{source.dropped} held-out example(s) dropped: they also occur in the training data")
    log = open_log(os.path.join(cfg.out_dir, "log.jsonl"), start_iter) if master else None

    def checkpoint(it):
        save_checkpoint(ckpt_path, {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "iter": it, "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
            "model_config": asdict(model_cfg), "train_config": asdict(cfg), "tokenizer": tok.state(),
            "pretrained": sorted(name for name, _ in raw_model.named_parameters() if name not in new_names),
            "spent": spent})

    def run_eval(it):
        val_loss, accuracy = evaluate(eval_model, eval_batches, device, autocast)
        _, blind = evaluate(eval_model, blind_batches, device, autocast)
        result = {"iter": it, **spent, "val_loss": val_loss, "accuracy": accuracy, "blind_accuracy": blind}
        if shifted_batches:
            result["shifted_accuracy"] = evaluate(eval_model, shifted_batches, device, autocast)[1]
        log.write(json.dumps({"kind": "eval", **result}) + "\n")
        save_json(os.path.join(cfg.out_dir, "eval.json"), result)
        return result

    # ---- the training loop
    model.train()
    bar = progress_bar(range(start_iter, cfg.max_iters), master and cfg.progress, initial=start_iter,
                       total=cfg.max_iters)
    # batches come from worker processes that draw them ahead of the step (a pure function of the index)
    draw = functools.partial(data.training_batch, source, tok, rank, start_iter, cfg.grad_accum)
    image_tokens = image_tokens_in_rows(model_cfg, device)  # on a CPU a micro-batch in parts by length (data.in_parts)
    batches = iter(data.drawn_ahead(draw, (cfg.max_iters - start_iter) * cfg.grad_accum, workers,
                               pin_memory=device_type == "cuda"))
    tokens, t0, loss_sum, steps = 0, time.time(), 0.0, 0
    for it in bar:
        factor = lr_factor(it, cfg)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        for micro in range(cfg.grad_accum):
            waited = time.time()
            parts = data.in_parts(next(batches), tok, image_tokens)
            spent["data_s"] += time.time() - waited
            loss = 0.0  # the micro-batch's: its parts' losses, each weighted by its share of the answer tokens
            for k, part in enumerate(parts):
                idx, targets, images = part.inputs(device)
                if ddp:  # only the last part of the last micro-batch all-reduces the gradients
                    model.require_backward_grad_sync = micro == cfg.grad_accum - 1 and k == len(parts) - 1
                with autocast:
                    _, part_loss = model(idx, images, targets)
                scaler.scale(part_loss * part.weight / cfg.grad_accum).backward()
                loss = loss + part_loss.detach() * part.weight
                tokens += int((part.idx != tok.pad_id).sum()) * world
        for opt in optimizer.optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for opt in optimizer.optimizers:
            scaler.step(opt)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, steps = loss_sum + loss.detach(), steps + 1  # on the device: no wait for it here
        if not master:
            continue
        evaluating = (it + 1) % cfg.eval_interval == 0 or it + 1 == cfg.max_iters
        if (it + 1) % cfg.log_interval == 0 or evaluating:  # .item() waits for the device: only this often
            tok_s = tokens / (time.time() - t0)
            last_loss = loss.item()  # the one wait for the device
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tok_s:.0f}")
            log.write(json.dumps({"kind": "train", "iter": it + 1, "loss": last_loss,
                                  "lr": cfg.lr * factor, "tok_s": tok_s}) + "\n")
        if evaluating:
            spent["train_s"] += time.time() - t0
            spent["text_tokens"] += tokens
            result = run_eval(it + 1)
            checkpoint(it + 1)
            bar.write(f"iter {it + 1}: train loss {float(loss_sum) / steps:.3f}, "
                      f"val loss {result['val_loss']:.3f} ({spent['train_s']:.0f} s of training, "
                      f"{spent['data_s']:.0f} s of it waiting for data)")
            tokens, t0, loss_sum, steps = 0, time.time(), 0.0, 0  # tokens/s counts training time only
    if master and start_iter < cfg.max_iters:
        print(accuracy_table(result))
        print(f"checkpoint: {ckpt_path}")
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_script(main, "train.py")
