"""
Picture: which keys each query may see, in each fusion, drawn from the code that trains the models.

One short example stream: two text tokens, an image, three text tokens, a second image, two text tokens (each image
N = 4 tokens, as a 16x16 image in 8x8 patches gives). The masks come from casa.may_attend, and the layouts from
VLM.insert_images (insertion: the image tokens are laid into the stream) and VLM.images_as_keys (cross and casa:
the images are keys of the fusion layers), exactly as VLM.forward calls them; so the picture cannot drift from
the code.

    python exercises/attention_masks.py --png=results/attention_masks.png

Rows are queries, columns keys; a cell is coloured by the kind of key a query may see (text, image token, image
marker) and left pale where it may not; thin black lines separate the windows (a window runs from an image marker
to the next).
"""
import os
import sys
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import figures  # noqa: E402
from casa import VLM, VLMConfig, may_attend  # noqa: E402
from common import build, check_writable, parse_options, run_script  # noqa: E402

MARK, TEXT = 2, 5  # token ids in the example: the image marker, and any text token
EXAMPLE = [TEXT, TEXT, MARK, TEXT, TEXT, TEXT, MARK, TEXT, TEXT]
COLORS = {"text": figures.PALETTE[1], "image": figures.PALETTE[3], "marker": figures.PALETTE[4]}
PALE = (242, 242, 242)


@dataclass
class MaskOptions:
    png: str = "attention_masks.png"  # where to write the picture


def example_model():
    return VLM(VLMConfig(image_size=16, patch_size=8, vit_layers=1, vit_dim=32, vit_heads=2, n_layer=1, n_head=2,
                         n_embd=32, vocab_size=8, image_token_id=MARK))


def masks(tokens=EXAMPLE):
    """{panel title: (mask (queries, keys) bool, query kinds, key kinds, query windows, key windows)}, laid out and
    masked by the model's own functions for the token stream `tokens`."""
    model = example_model()
    idx = torch.tensor([tokens])
    is_image = idx == MARK
    n = int(is_image.sum())
    N, C = model.config.n_image_tokens, model.config.n_embd
    text_kinds = ["marker" if t == MARK else "text" for t in tokens]
    win = is_image.long().cumsum(1)  # as VLM.forward numbers the windows
    pos = torch.arange(len(tokens))[None]
    image_tokens = torch.zeros(n, N, C)

    # insertion: one stream of text and image tokens, causal self-attention by position (an image's tokens sit at
    # their marker's, so they and the marker see one another)
    stream, s, text_at = model.insert_images(torch.zeros(1, len(tokens), C), image_tokens, is_image, 0)
    kinds = ["image"] * stream.size(1)
    for t, slot in enumerate(text_at[0].tolist()):
        kinds[slot] = text_kinds[t]
    stream_win = torch.zeros_like(s.pos)  # insertion has no windows of its own; outline the example's
    stream_win[0, text_at[0]] = win[0]
    for slot in range(stream.size(1)):
        if kinds[slot] == "image":  # an image's tokens come right before its marker, in the window it opens
            stream_win[0, slot] = stream_win[0, next(j for j in range(slot, stream.size(1)) if kinds[j] == "marker")]
    insertion = may_attend("self", s.pos, s.win, s.pos, s.win)[0, 0]

    # cross and casa: text queries; the images are keys of the fusion layer (casa: then the text too)
    _, image_pos, image_win = model.images_as_keys(image_tokens, is_image, 0, win)
    cross = may_attend("cross", pos, win, image_pos, image_win)[0, 0]
    k_pos, k_win = torch.cat([image_pos, pos], 1), torch.cat([image_win, win], 1)
    casa = may_attend("casa", pos, win, k_pos, k_win)[0, 0]
    image_kinds = ["image"] * image_pos.size(1)
    return {"insertion: self-attention over the stream": (insertion, kinds, kinds, stream_win[0], stream_win[0]),
            "cross: fusion layer": (cross, text_kinds, image_kinds, win[0], image_win[0]),
            "casa: fusion layer": (casa, text_kinds, image_kinds + text_kinds, win[0], k_win[0])}


def panel(mask, q_kinds, k_kinds, q_win, k_win, cell):
    """One fusion's mask as a picture: a cell per (query, key), coloured by the key's kind where the query may see
    it, pale where not; black lines between windows."""
    img = Image.new("RGB", (len(k_kinds) * cell, len(q_kinds) * cell), "white")
    d = ImageDraw.Draw(img)
    for i in range(len(q_kinds)):
        for j, k in enumerate(k_kinds):
            d.rectangle([j * cell, i * cell, (j + 1) * cell - 2, (i + 1) * cell - 2],
                        fill=COLORS[k] if mask[i, j] else PALE)
    for j in range(1, len(k_kinds)):  # window boundaries
        if k_win[j] != k_win[j - 1]:
            d.line([j * cell - 1, 0, j * cell - 1, img.height], fill="black", width=2)
    for i in range(1, len(q_kinds)):
        if q_win[i] != q_win[i - 1]:
            d.line([0, i * cell - 1, img.width, i * cell - 1], fill="black", width=2)
    return img


def draw(panels, path, cell=22):
    """One panel per fusion, side by side, and a legend."""
    img = figures.sheet([panel(*p, cell) for p in panels.values()], gap=60, margin=(40, 16), size=18,
                        above=[[title] for title in panels], below=[["keys ->", "rows: queries"]] * len(panels),
                        legend_entries=[*((f"may see: {k}", c) for k, c in COLORS.items()), ("may not", PALE)])
    img.save(path)
    return img


def main(argv):
    _, (options,) = parse_options(argv, [("options", MaskOptions)], __doc__)
    args = build(MaskOptions, options)
    check_writable(args.png, "png")
    draw(masks(), args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    run_script(main, "attention_masks.py")
