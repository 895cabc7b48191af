"""
Ask a trained model about images.

    python sample.py --ckpt out/ckpt.pt --image photo.jpg --prompt "what color is the circle?"
    python sample.py --ckpt out/ckpt.pt --scene 7 --save scene.png          # a new procedural scene, captioned
    python sample.py --ckpt out/ckpt.pt --image a.png --image b.png --prompt "how many shapes are there?"
    python sample.py --ckpt out-video/ckpt.pt --video synthetic:3 --srt clip.srt --gif clip.gif   # live captions

Several --image flags make a multi-image conversation. With one --prompt it comes after all the images (cross and
CASA then look at the last image only, insertion at all of them); with one --prompt per image, each image gets its
own turn and the model's earlier answers stay in the context.

--video streams a clip (an animated GIF, a folder of frames, or synthetic:SEED) through one persistent cache: each
frame is encoded and appended, the model writes a caption until its stop token, and that stop token stays in the
cache as the frame's boundary. One line per frame: time in the video, latency of the frame, caption.
"""
import math
from dataclasses import dataclass, field

import torch
from PIL import Image, ImageDraw

import casa
import data
import figures
import scenes
from casa import check_fields
from common import (UsageError, build, caption_stream, check_writable, load_model, parse_options, pick_device,
                    run_script)

MAX_PROMPT_CHARS = 200  # the training questions are far shorter; longer prompts only produce noise


@dataclass
class SampleConfig:
    ckpt: str = "out/ckpt.pt"   # checkpoint written by train.py
    image: list[str] = field(default_factory=list)   # an image file; repeat for several images
    scene: int | None = None    # render procedural scene SEED instead of reading a file
    save: str = ""              # with --scene: also write the rendered scene to this path
    prompt: list[str] = field(default_factory=list)  # the question (default: a caption); repeat for one per image
    video: str = ""             # an animated GIF, a folder of frames, or synthetic:SEED (a procedural clip)
    fps: float = 2.0            # frame rate of a folder or synthetic clip
    srt: str = ""               # with --video: write the captions as subtitles
    gif: str = ""               # with --video: write the clip with each frame's caption under it
    max_text: int | None = None  # with --video: keep only the latest N text tokens in the cache (bounded memory;
                                 # about the text of one training clip reads best: README, the text window)
    attention_png: str = ""     # with one question: draw which patches of its (last) image the answer looked at
    temperature: float = 0.0    # 0 = greedy
    top_k: int | None = None    # sample only from the k most likely tokens
    max_new_tokens: int = 60
    seed: int = 0               # for sampling
    device: str = "auto"        # auto | cpu | cuda | cuda:N | mps

    def __post_init__(self):
        check_fields(self, at_least=dict(temperature=0.0, max_new_tokens=1, max_text=1, top_k=1), above=dict(fps=0.0))
        if sum(bool(x) for x in (self.image, self.scene is not None, self.video)) > 1:
            raise ValueError("give one of --image, --scene and --video")
        if (self.srt or self.gif) and not self.video:
            raise ValueError("--srt and --gif go with --video")
        if self.save and self.scene is None:
            raise ValueError("--save goes with --scene")
        if self.attention_png and (self.video or len(self.prompt) > 1):
            raise ValueError("--attention_png goes with one question about --image or --scene")


def prompt_ids(tok, n_images, prompt):
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UsageError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are supported")
    return [tok.image_id] * n_images + [tok.user_id] + tok.encode(prompt) + [tok.assistant_id]


def main(argv):
    _, (options,) = parse_options(argv, [("options", SampleConfig)], __doc__)
    args = build(SampleConfig, options)
    for option in ("save", "srt", "gif", "attention_png"):  # before any work: a clip must not stream for nothing
        check_writable(getattr(args, option), option)
    device = pick_device(args.device)
    model, tok, _ = load_model(args.ckpt, device)
    generator = torch.Generator(device).manual_seed(args.seed)
    if args.video:
        return stream_video(args, model, tok, device, generator)
    size = model.config.image_size
    if args.scene is not None:
        image, _ = scenes.render_scene(args.scene, size)
        if args.save:
            image.save(args.save)
        images = [image]
    else:
        images = [data.load_image(path, size) for path in args.image]
    prompts = args.prompt or ["describe the image."]
    if len(prompts) > 1 and len(prompts) != len(images):
        raise UsageError(f"{len(prompts)} prompts for {len(images)} images: give one prompt, or one per image")
    if args.attention_png and not images:
        raise UsageError("--attention_png needs an image: give --image or --scene")
    turns = [(images, prompts[0])] if len(prompts) == 1 else [([im], pr) for im, pr in zip(images, prompts)]

    cache = model.new_cache()
    for turn_images, prompt in turns:
        idx = torch.tensor([prompt_ids(tok, len(turn_images), prompt)], device=device)
        pixels = torch.stack([data.to_tensor(im) for im in turn_images]).to(device) if turn_images else None
        out = model.generate(idx, pixels, args.max_new_tokens, args.temperature, args.top_k, stop_token=tok.eos_id,
                             cache=cache, generator=generator)
        answer = [t for t in out[0].tolist() if t != tok.eos_id]
        print(tok.decode(answer))
    if args.attention_png:
        panels = answer_attention(model, idx, pixels, answer)
        draw_attention(args.attention_png, images[-1], panels, f"Q: {prompts[0]}   A: {tok.decode(answer)}",
                       model.config.fusion)


# ------------------------------------------------------------------------------------------------ attention maps


def attention_weights(layer, x, kv, mask, pos, rotate):
    """The softmax weights (B, H, Tq, Tk) that casa.attend applies, recomputed from one Attention call's inputs."""
    q = layer.heads(layer.q_proj(x))
    if rotate:
        q = casa.rope(q, pos, layer.rope_base)
    scores = q @ kv.k.transpose(-1, -2) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0)  # a query that sees nothing gets no weight


@torch.no_grad()
def answer_attention(model, idx, pixels, answer):
    """Per layer that looks at images (every layer under insertion, the fusion layers under cross and casa): the
    attention the queries that wrote the answer gave each patch of the last image, averaged over those queries and
    the heads, (N,); and the share of their attention the image got in all: (label, weights, share) per layer.
    One uncached pass over prompt + answer, through the dense masks (the same attention as the cache's, tested)."""
    c, N = model.config, model.config.n_image_tokens
    seq = torch.cat([idx, torch.tensor([answer], device=idx.device, dtype=idx.dtype)], 1)
    is_image = seq == c.image_token_id
    queries = torch.arange(idx.size(1) - 1, seq.size(1) - 1, device=idx.device)  # each wrote the token after it
    if c.fusion == "insertion":  # image tokens are stream tokens: the N slots before the last marker
        slots = casa.stream_slots(is_image, N)[0]
        queries, first_key = slots[queries], int(slots[is_image[0].nonzero()[-1]]) - N
        blocks = list(enumerate(model.blocks))
        layers = [block.attn for _, block in blocks]
    else:  # fusion keys: the images first (N each, in order), then (casa) the text
        first_key = (int(is_image.sum()) - 1) * N
        blocks = [(i, block) for i, block in enumerate(model.blocks) if block.fusion]
        layers = [block.attn if block.share_weights else block.cross for _, block in blocks]
    calls = {id(layer): [] for layer in layers}
    def record(layer):
        def forward(x, kv, mask=None, pos=None, rotate=False):
            calls[id(layer)].append(attention_weights(layer, x, kv, mask, pos, rotate))
            return type(layer).forward(layer, x, kv, mask, pos, rotate)
        return forward
    dense = [block.block_wise for block in model.blocks]
    try:
        for layer in layers:
            layer.forward = record(layer)
        for block in model.blocks:
            block.block_wise = False
        model(seq, pixels)
    finally:
        for layer in layers:
            del layer.forward
        for block, was in zip(model.blocks, dense):
            block.block_wise = was
    panels = []
    for (i, _), layer in zip(blocks, layers):  # a shared-weights fusion layer: its block's self-attention, 2nd call
        w = calls[id(layer)][-1][0].mean(0)[queries]  # (answer queries, keys)
        image = w[:, first_key:first_key + N]
        panels.append((f"block {i}", image.mean(0), float(image.sum(1).mean())))
    return panels


def draw_attention(path, image, panels, title, fusion, size=256):
    """One panel per layer: the image enlarged, each patch as bright as the attention it got (the panel's most
    looked-at patch at full brightness, patches it ignored dark), and the image's share of all that layer's
    attention under it. The picture is (16 + n * (size + 16)) x (size + 110) pixels."""
    g = int(len(panels[0][1]) ** 0.5)
    base = image.convert("RGB").resize((size, size), Image.Resampling.NEAREST)
    black = Image.new("RGB", (size, size))
    lit = []
    for _, weights, _ in panels:
        heat = (weights / weights.max().clamp_min(1e-9)).view(1, 1, g, g)
        light = torch.nn.functional.interpolate(heat, size=(size, size), mode="nearest")[0, 0]
        lit.append(Image.composite(base, black, Image.fromarray((40 + 215 * light.clamp(0, 1)).byte().cpu().numpy(),
                                                                "L")))
    figures.sheet(lit, gap=16, margin=(16, 10), size=18,
                  title=[title, f"{fusion}: where the answer's tokens looked (bright: most attention; dark: none)"],
                  below=[[label, f"{share:.0%} of its attention on the image"] for label, _, share in panels]
                  ).save(path)


def stream_video(args, model, tok, device, generator):
    size = model.config.image_size
    if args.video.startswith("synthetic:"):
        seed = args.video.removeprefix("synthetic:")
        if not seed.isdigit():
            raise UsageError(f"--video synthetic:SEED needs a whole number, got {seed!r}")
        frames = [turn.images[0] for turn in scenes.make_clip(int(seed), size).turns]
        times = [i / args.fps for i in range(len(frames))]
    else:
        frames, times = data.load_video(args.video, size, args.fps)
    captions = []
    stream = caption_stream(model, tok, frames, device, args.max_new_tokens, args.max_text,
                            temperature=args.temperature, top_k=args.top_k, generator=generator)
    for t, (caption, seconds, _) in zip(times, stream):
        captions.append(caption)
        print(f"{t:8.2f}s {1000 * seconds:7.1f} ms  {caption}", flush=True)
    ends = times[1:] + [times[-1] + 1 / args.fps]
    if args.srt:
        write_srt(args.srt, times, ends, captions)
    if args.gif:
        write_captioned_gif(args.gif, frames, times, ends, captions)


def srt_time(seconds):
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_srt(path, starts, ends, captions):
    blocks = [f"{i}\n{srt_time(a)} --> {srt_time(b)}\n{text or '-'}\n"
              for i, (a, b, text) in enumerate(zip(starts, ends, captions), 1)]
    with open(path, "w") as f:
        f.write("\n".join(blocks))


def write_captioned_gif(path, frames, starts, ends, captions, scale=4, size=14):
    """The clip, each frame enlarged with its caption under it, wrapped to the frame's width (every page as tall as
    the longest caption needs: a GIF keeps one canvas), shown as long as the caption was."""
    width, height = frames[0].width * scale, frames[0].height * scale
    wrapped = [figures.wrap(text or "-", width, size) for text in captions]
    page_size = (width + 8, height + 8 + max(map(len, wrapped)) * figures.line_height(size))
    pages = []
    for frame, lines in zip(frames, wrapped):
        page = Image.new("RGB", page_size, "black")
        page.paste(frame.resize((width, height), Image.Resampling.NEAREST), (4, 4))
        draw = ImageDraw.Draw(page)
        for i, line in enumerate(lines):
            figures.text(draw, (4, height + 6 + i * figures.line_height(size)), line, size, "white")
        pages.append(page)
    durations = [max(20, round(1000 * (b - a))) for a, b in zip(starts, ends)]
    pages[0].save(path, save_all=True, append_images=pages[1:], duration=durations, loop=0)


if __name__ == "__main__":
    run_script(main, "sample.py")
