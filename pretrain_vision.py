"""
Pretrain casa's vision encoder on its own, before it meets a language model.

Real VLMs start from a vision encoder someone else trained (CLIP, SigLIP); casa downloads nothing, so this script
trains one on the procedural scenes, in a few minutes on a CPU. Every patch token learns to name what lies under its
centre: the shape, the colour, the size (small or big, as captions say it) and the cell (which ninth of the image,
as the position questions say it) of the object there; on text, the character and its place in the word (for
reading glyphs, not one font's pixels); or
"none" (dense labels, like a segmentation backbone's), so each token carries what the questions will ask about it.
Linear heads, one per kind of label, read the tokens and are thrown away afterwards; the checkpoint holds the
encoder only, and train.py builds a VLM on top of it:

    python pretrain_vision.py                                  # writes out-vision/ckpt.pt
    python train.py --init_from=out-vision/ckpt.pt             # the VLM; the encoder trains on at --pretrained_lr
    python pretrain_vision.py --init_from=resume               # carry on exactly where a run stopped

Why: trained from scratch inside the VLM, the encoder learns colours but not shapes (measured with
exercises/vision_probe.py --frozen_from; README, "Accuracy against budget"). Our reading: the only signal it gets
comes through fusion layers that do not yet know where to look. And the cell: pretrained on shape and colour
alone, the VLM's position answers stayed at chance (README); with it they climb with the other answers.
Options are --key=value or --key value: PretrainConfig below, and VLMConfig's (the model the checkpoint will be part
of).
"""
import functools
import json
import os
import random
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import scenes
from casa import VLM, VLMConfig, check_fields
from common import (build, build_model, build_optimizer, check_fits, load_optimizer_state, load_weights,
                    lock_out_dir, lr_factor, model_config, open_log, parse_options, pick_device,
                    resume_checkpoint, run_script, save_checkpoint)


@dataclass
class PretrainConfig:
    out_dir: str = "out-vision"
    init_from: str = "scratch"  # scratch | resume (from out_dir)
    batch_size: int = 32        # scenes per step, 64 labelled patches each
    max_iters: int = 2500
    lr: float = 2e-3
    min_lr_ratio: float = 1.0   # cosine decay ends at lr * min_lr_ratio (1 = a constant rate: README runs)
    warmup_iters: int = 0
    weight_decay: float = 0.1
    optimizer: str = "muon"     # muon (the ViT blocks' and projector's matrices; AdamW for the rest) | adamw
    eval_interval: int = 250
    eval_scenes: int = 256      # held-out scenes
    text_share: float = 0.5     # of the scenes have text (and 0-2 objects), as the reading task's do; 0: shapes only
    style: str = "default"      # the look of training scenes: default, or varied (each scene its own camera, shades
                                # and ink: scenes.STYLES); the held-out scenes are drawn in the default look
    seed: int = 0
    device: str = "auto"        # auto | cpu | cuda | cuda:N | mps
    workers: int | None = None  # processes drawing batches ahead (default: cores - 2, at most 8; 0: here)

    def __post_init__(self):
        check_fields(self, at_least=dict(batch_size=1, max_iters=1, eval_interval=1, eval_scenes=1, lr=0.0, workers=0,
                                         min_lr_ratio=0.0, warmup_iters=0, weight_decay=0.0, text_share=0.0))
        if self.text_share > 1:
            raise ValueError(f"text_share is a share of the scenes, at most 1, got {self.text_share}")
        if self.init_from not in ("scratch", "resume"):
            raise ValueError(f"--init_from expects scratch or resume, got {self.init_from!r}")
        if self.optimizer not in ("muon", "adamw"):
            raise ValueError(f"optimizer must be muon or adamw, got {self.optimizer!r}")
        scenes.check_style(self.style, training=True)


LABELS = ("shape", "color", "size", "cell", "char", "place")  # what each patch names: scenes.object_labels's for a
# patch on an object, the character and its place in the text (0-3) for a patch on a glyph
NONE = (len(scenes.SHAPES), len(scenes.COLORS), len(scenes.RADIUS), len(scenes.CELLS), len(scenes.CHARS),
        4)  # "nothing of this kind"
OBJECT_LABELS = LABELS.index("char")  # LABELS[:OBJECT_LABELS] name the object under a patch, the rest the glyph


def labelled_scenes(seed, n, size, grid, text_share, style="default"):
    """n random scenes from the VLM's own generator, drawn in `style`: images (n, 3, size, size) and, for every
    patch, its labels (LABELS; NONE where the patch shows no object, or no glyph): (n, grid * grid, len(LABELS))."""
    rng = random.Random(seed)
    drawn = [scenes.sample_scene(rng, size, text=rng.random() < text_share, style=style) for _ in range(n)]
    images = torch.stack([data.to_tensor(scenes.draw_scene(scene)) for scene in drawn])
    labels = []
    for scene in drawn:
        objects = torch.tensor([scenes.object_labels(o, size) for o in scene["objects"]] + [NONE[:OBJECT_LABELS]])
        glyphs = torch.tensor([(scenes.CHARS.index(c), i) for i, c in enumerate(scene.get("text", ""))]
                              + [NONE[OBJECT_LABELS:]])
        # owner -1 (no object there, no glyph) picks each table's last row: NONE
        labels.append(torch.cat([objects[scenes.patch_objects(scene, grid)], glyphs[scenes.patch_chars(scene, grid)]],
                                dim=1))
    return images, torch.stack(labels)


def training_batch(seed, start_iter, n, size, grid, text_share, style, i):
    """The i-th batch from start_iter on: a pure function of (seed, iteration), so a resumed run sees exactly the
    batches it would have seen, and worker processes can draw them ahead of the step."""
    return labelled_scenes(f"{seed}/{start_iter + i}", n, size, grid, text_share, style)


class Heads(nn.Module):
    """One linear classifier per label kind, applied to every token: (n, N, C) -> [(n, N, classes + 1)], one per
    kind (LABELS)."""

    def __init__(self, dim):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, k + 1) for k in NONE)  # + 1: "none"

    def forward(self, tokens):
        return [head(tokens) for head in self.heads]


def loss_of(logits, labels):
    """Summed cross-entropy of the heads over all patches. logits: [(n, N, classes + 1)], one per kind; labels
    (n, N, len(LABELS))."""
    return sum(F.cross_entropy(lg.flatten(0, 1), labels[..., k].flatten()) for k, lg in enumerate(logits))


def hits_of(logits, labels):
    """Per label kind, the fraction right on the patches that show something of that kind (an object, a glyph: the
    many "none" patches are easy and would flatter the number); kinds no patch shows (no text) are left out."""
    shown = [(name, lg.argmax(-1)[labels[..., k] < NONE[k]], labels[..., k][labels[..., k] < NONE[k]])
             for k, (name, lg) in enumerate(zip(LABELS, logits))]
    return {name: (guess == truth).float().mean().item() for name, guess, truth in shown if truth.numel()}


def main(argv):
    _, (run_options, model_options) = parse_options(argv, [("pretraining options (PretrainConfig)", PretrainConfig),
                                                           ("model options (VLMConfig)", VLMConfig)], __doc__)
    cfg, ckpt, start_iter = build(PretrainConfig, run_options), None, 0
    if cfg.init_from == "resume":  # the saved options, but for those given now
        cfg, ckpt, start_iter = resume_checkpoint(cfg.out_dir, PretrainConfig, run_options, model_options,
                                                  needs=("heads",))
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    device = pick_device(cfg.device)
    lock = lock_out_dir(cfg.out_dir)  # noqa: F841 (after the checks; held until the process ends)
    torch.manual_seed(cfg.seed)
    if ckpt:
        vlm, tok = build_model(ckpt, ckpt_path)
        model_cfg = vlm.config
    else:
        tok = data.Tokenizer()
        model_cfg = model_config(model_options, tok)
        check_fits(model_cfg)
        vlm = VLM(model_cfg)
    encoder = vlm.vision.to(device)  # built and initialised exactly as a VLM builds it
    heads = Heads(model_cfg.n_embd).to(device)
    # Muon for the ViT blocks' and the projector's weight matrices (--optimizer=muon), AdamW for the rest
    named = [(f"vision.{n}", p) for n, p in encoder.named_parameters()] + list(heads.named_parameters(prefix="heads"))
    optimizer = build_optimizer(named, lambda name: cfg.lr, ("vision.blocks.", "vision.proj"), cfg)
    if ckpt:
        load_weights(encoder, {k.removeprefix("vision."): v for k, v in ckpt["model"].items()}, ckpt_path)
        load_weights(heads, ckpt["heads"], ckpt_path)
        load_optimizer_state(optimizer, ckpt, ckpt_path)
    grid = model_cfg.image_size // model_cfg.patch_size
    # seed -1: never trained on
    held_out = [t.to(device) for t in labelled_scenes(-1, cfg.eval_scenes, model_cfg.image_size, grid,
                                                      cfg.text_share)]
    print(f"vision encoder {sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M parameters; device {device}")
    # training time (evaluation excluded; data_s: the part the loop waited for batches, or drew them with workers=0)
    spent = {"train_s": 0.0, "data_s": 0.0, **(ckpt.get("spent", {}) if ckpt else {})}
    log = open_log(os.path.join(cfg.out_dir, "log.jsonl"), start_iter)
    workers = data.default_workers() if cfg.workers is None else cfg.workers
    draw = functools.partial(training_batch, cfg.seed, start_iter, cfg.batch_size, model_cfg.image_size, grid,
                             cfg.text_share, cfg.style)
    batches = iter(data.drawn_ahead(draw, cfg.max_iters - start_iter, workers, pin_memory=device.startswith("cuda")))
    t0 = time.time()
    for it in range(start_iter, cfg.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(it, cfg)
        # a pure function of (seed, iteration), so a resumed run sees exactly the batches it would have seen
        waited = time.time()
        images, labels = (t.to(device, non_blocking=True) for t in next(batches))
        spent["data_s"] += time.time() - waited
        loss = loss_of(heads(encoder(images)), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (it + 1) % cfg.eval_interval == 0 or it + 1 == cfg.max_iters:
            spent["train_s"] += time.time() - t0
            with torch.no_grad():
                encoder.eval()
                hits = hits_of(heads(encoder(held_out[0])), held_out[1])
                encoder.train()
            loss_now = loss.item()  # the one wait for the device
            print(f"iter {it + 1}: loss {loss_now:.3f}, held-out patches right: "
                  + ", ".join(f"{name} {share:.0%}" for name, share in hits.items())
                  + f" ({spent['train_s']:.0f} s, {spent['data_s']:.0f} s of it waiting for data)")
            log.write(json.dumps({"kind": "eval", "iter": it + 1, **spent, "loss": loss_now,
                                  "patches_right": hits}) + "\n")
            save_checkpoint(ckpt_path, {
                "model": {f"vision.{k}": v for k, v in encoder.state_dict().items()}, "heads": heads.state_dict(),
                "optimizer": optimizer.state_dict(), "iter": it + 1, "model_config": asdict(model_cfg),
                "train_config": asdict(cfg), "tokenizer": tok.state(), "spent": spent})
            t0 = time.time()
    print(f"checkpoint: {ckpt_path} (start a VLM from it: python train.py --init_from={ckpt_path})")


if __name__ == "__main__":
    run_script(main, "pretrain_vision.py")
