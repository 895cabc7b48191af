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
import argparse
import signal
import sys
import time

import torch

import data
from casa import VLM, VLMConfig
from train import UsageError, load_checkpoint, pick_device

MAX_PROMPT_CHARS = 200  # the training questions are far shorter; longer prompts only produce noise


def load_model(path, device):
    ckpt = load_checkpoint(path, device)
    try:
        model = VLM(VLMConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        tok = data.Tokenizer.from_state(ckpt["tokenizer"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise UsageError(f"{path} does not hold a model this casa.py can build: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), tok


def prompt_ids(tok, n_images, prompt):
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UsageError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are supported")
    return [tok.image_id] * n_images + [tok.user_id] + tok.encode(prompt) + [tok.assistant_id]


def parse_args(argv):
    p = data.OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="out/ckpt.pt", help="checkpoint written by train.py (default: %(default)s)")
    p.add_argument("--image", action="append", default=[], help="an image file; repeat for several images")
    p.add_argument("--scene", type=int, help="render procedural scene SEED instead of reading a file")
    p.add_argument("--save", help="with --scene: also write the rendered scene to this path")
    p.add_argument("--prompt", action="append", help="the question (default: a caption); repeat for one per image")
    p.add_argument("--video", help="an animated GIF, a folder of frames, or synthetic:SEED (a procedural clip)")
    p.add_argument("--fps", type=float, default=2.0, help="frame rate of a folder or synthetic clip (default: %(default)s)")
    p.add_argument("--srt", help="with --video: write the captions as subtitles")
    p.add_argument("--gif", help="with --video: write the clip with each frame's caption under it")
    p.add_argument("--max_text", type=int, default=None,
                   help="with --video: keep only the latest N text tokens in the cache (bounded memory)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top_k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--max_new_tokens", type=int, default=60, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="for sampling (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default: %(default)s)")
    args = p.parse_args(argv)
    if sum(bool(x) for x in (args.image, args.scene is not None, args.video)) > 1:
        p.error("give one of --image, --scene and --video")
    if (args.srt or args.gif) and not args.video:
        p.error("--srt and --gif go with --video")
    if args.fps <= 0 or (args.max_text is not None and args.max_text < 1):
        p.error("--fps and --max_text must be positive")
    if args.save and args.scene is None:
        p.error("--save goes with --scene")
    if args.temperature < 0 or (args.top_k is not None and args.top_k < 1) or args.max_new_tokens < 1:
        p.error("--temperature must be >= 0, --top_k and --max_new_tokens >= 1")
    return args


def main(argv):
    args = parse_args(argv)
    device = pick_device(args.device)
    model, tok = load_model(args.ckpt, device)
    generator = torch.Generator(device).manual_seed(args.seed)
    if args.video:
        return stream_video(args, model, tok, device, generator)
    size = model.config.image_size
    if args.scene is not None:
        image, _ = data.render_scene(args.scene, size)
        if args.save:
            image.save(args.save)
        images = [image]
    else:
        images = [data.load_image(path, size) for path in args.image]
    prompts = args.prompt or ["describe the image."]
    if len(prompts) > 1 and len(prompts) != len(images):
        raise UsageError(f"{len(prompts)} prompts for {len(images)} images: give one prompt, or one per image")
    turns = [(images, prompts[0])] if len(prompts) == 1 else [([im], pr) for im, pr in zip(images, prompts)]

    cache = model.new_cache()
    for turn_images, prompt in turns:
        idx = torch.tensor([prompt_ids(tok, len(turn_images), prompt)], device=device)
        pixels = torch.stack([data.to_tensor(im) for im in turn_images]).to(device) if turn_images else None
        out = model.generate(idx, pixels, args.max_new_tokens, args.temperature, args.top_k, stop_token=tok.eos_id,
                             cache=cache, generator=generator)
        answer = [t for t in out[0].tolist() if t != tok.eos_id]
        print(tok.decode(answer))


def stream_video(args, model, tok, device, generator):
    size = model.config.image_size
    if args.video.startswith("synthetic:"):
        seed = args.video.removeprefix("synthetic:")
        if not seed.isdigit():
            raise UsageError(f"--video synthetic:SEED needs a whole number, got {seed!r}")
        frames = [turn.images[0] for turn in data.make_clip(int(seed), size).turns]
        times = [i / args.fps for i in range(len(frames))]
    else:
        frames, times = data.load_video(args.video, size, args.fps)
    cache = model.new_cache(max_text=args.max_text)
    marker, stop = torch.tensor([[tok.image_id]], device=device), torch.tensor([[tok.eos_id]], device=device)
    captions = []
    for frame, t in zip(frames, times):
        start = time.perf_counter()
        out = model.generate(marker, data.to_tensor(frame)[None].to(device), args.max_new_tokens, args.temperature,
                             args.top_k, stop_token=tok.eos_id, cache=cache, generator=generator)
        if out[0, -1] != tok.eos_id:  # cut off by max_new_tokens: still close the frame in the cache
            model(stop, cache=cache)
        latency = time.perf_counter() - start
        captions.append(tok.decode([i for i in out[0].tolist() if i != tok.eos_id]))
        print(f"{t:8.2f}s {1000 * latency:7.1f} ms  {captions[-1]}", flush=True)
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


def write_captioned_gif(path, frames, starts, ends, captions, scale=4):
    from PIL import Image, ImageDraw
    pages = []
    for frame, text in zip(frames, captions):
        w, h = frame.width * scale, frame.height * scale
        page = Image.new("RGB", (w, h + 24), "black")
        page.paste(frame.resize((w, h), Image.Resampling.NEAREST))
        ImageDraw.Draw(page).text((4, h + 6), text, fill="white")
        pages.append(page)
    durations = [max(20, round(1000 * (b - a))) for a, b in zip(starts, ends)]
    pages[0].save(path, save_all=True, append_images=pages[1:], duration=durations, loop=0)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `python sample.py ... | head` ends quietly
    try:
        main(sys.argv[1:])
    except (UsageError, data.DataError) as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        sys.exit(2)
