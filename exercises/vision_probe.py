"""
Exercise: how fast can a vision encoder learn to see the shapes in our scenes?

Train casa's vision encoder (or a plain 3-layer CNN for comparison) with a linear head on a question that needs
no language at all: the shape of the single object in a scene (6 shapes, chance = 1/6). The tokens are pooled with
a max, which (like attention) can pick the object out of the background; a mean dilutes it.

    python exercises/vision_probe.py --encoder=vit                         # casa's ViT (LayerScale gains 0.01)
    python exercises/vision_probe.py --encoder=vit --vit_layer_scale=0     # ... without LayerScale: stalls
    python exercises/vision_probe.py --encoder=cnn                         # three strided 3x3 convolutions

Try: --pool=mean, --vit_layers=0 or 1, --lr, --warmup_iters. And --ckpt=CKPT: how much shape does the encoder of a
trained VLM hold, or of one from pretrain_vision.py? (Options are --key=value or --key value; --help lists them.) Why do random residual blocks, updated by Adam at 2e-3,
stop a ViT from learning, when a gain of 0.01 in front of each branch does not?
"""
import os
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import scenes  # noqa: E402
from casa import VLM, VLMConfig, check_fields  # noqa: E402
from common import UsageError, build, build_model, load_checkpoint, load_weights, parse_options, run_script  # noqa: E402


@dataclass
class ProbeConfig:
    encoder: str = "vit"        # vit (casa's, as a VLM builds it) | cnn
    vit_layers: int = VLMConfig.vit_layers
    vit_layer_scale: float = VLMConfig.vit_layer_scale  # starting gain of the ViT residual branches (0 = off)
    pool: str = "max"           # max | mean: how the tokens become one vector for the head
    lr: float = 2e-3
    warmup_iters: int = 0       # linear warmup
    max_iters: int = 300
    batch_size: int = 32
    seed: int = 0
    ckpt: str = ""              # probe a trained encoder instead: a train.py or pretrain_vision.py checkpoint's,
                                # frozen, so that only the head learns

    def __post_init__(self):
        check_fields(self, at_least=dict(vit_layers=0, vit_layer_scale=0.0, lr=0.0, warmup_iters=0, max_iters=1,
                                         batch_size=1))
        for name, allowed in (("encoder", ("vit", "cnn")), ("pool", ("max", "mean"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} expects {' or '.join(allowed)}, got {getattr(self, name)!r}")


class SmallCNN(nn.Module):
    """(n, 3, 64, 64) -> (n, 64, dim): an 8x8 grid of features, the same token layout as the ViT's."""

    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, dim // 4, 3, 2, 1), nn.GELU(), nn.Conv2d(dim // 4, dim // 2, 3, 2, 1),
                                 nn.GELU(), nn.Conv2d(dim // 2, dim, 3, 2, 1))

    def forward(self, images):
        return self.net(images * 2 - 1).flatten(2).transpose(1, 2)


def shape_batch(seed, n, size):
    """n single-object scenes and the index of each object's shape in scenes.SHAPES."""
    rng = random.Random(seed)
    drawn = [scenes.sample_scene(rng, size, n_objects=1) for _ in range(n)]
    images = torch.stack([data.to_tensor(scenes.draw_scene(s)) for s in drawn])
    return images, torch.tensor([scenes.SHAPES.index(s["objects"][0]["shape"]) for s in drawn])


def main(argv):
    _, (options,) = parse_options(argv, [("options", ProbeConfig)], __doc__)
    args = build(ProbeConfig, options)
    torch.manual_seed(args.seed)
    if args.ckpt:  # does this trained encoder already hold shapes, linearly?
        ckpt = load_checkpoint(args.ckpt)
        model, _ = build_model(ckpt, args.ckpt)
        vision = {k: v for k, v in ckpt["model"].items() if k.startswith("vision.")}
        load_weights(model, vision, args.ckpt, strict=False)
        missing = [k for k in model.state_dict() if k.startswith("vision.") and k not in vision]
        if missing:
            raise UsageError(f"{args.ckpt} holds no {missing[0]}: not an encoder this casa.py builds")
        cfg, encoder = model.config, model.vision.eval().requires_grad_(False)
    else:
        cfg = VLMConfig(vit_layers=args.vit_layers, vit_layer_scale=args.vit_layer_scale)
        # the ViT exactly as a VLM builds and initialises it (the language model around it is not used)
        encoder = VLM(cfg).vision if args.encoder == "vit" else SmallCNN(cfg.n_embd)
    head = nn.Linear(cfg.n_embd, len(scenes.SHAPES))
    params = [p for p in list(encoder.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    def logits(images):
        tokens = encoder(images)  # (n, 64, n_embd)
        return head(tokens.amax(1) if args.pool == "max" else tokens.mean(1))

    held_out = shape_batch(-1, 256, cfg.image_size)  # a seed the training batches never use
    t0 = time.time()
    for it in range(args.max_iters):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (it + 1) / max(1, args.warmup_iters))
        images, shapes = shape_batch(it, args.batch_size, cfg.image_size)
        loss = F.cross_entropy(logits(images), shapes)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (it + 1) % 50 == 0:
            with torch.no_grad():
                accuracy = (logits(held_out[0]).argmax(-1) == held_out[1]).float().mean().item()
            print(f"iter {it + 1}: loss {loss.item():.3f}, held-out accuracy {accuracy:.0%} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    run_script(main, "vision_probe.py")
