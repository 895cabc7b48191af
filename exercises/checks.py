"""
What the graders (grade.py) stand on: small models of several shapes, batches and streams drawn with a fixed seed,
and the situations the real code path puts a function in, recorded from the project's own code.

A grader checks a student's function where casa.py calls it: every batch row (row 0 is never the widest), every
call of a cached stream (a call may hold the last token of a window and then the next frame's marker, as streaming
does every turn), several sizes, bases and numbers of layers, and the outputs cached against uncached.
"""
import functools
import inspect
import random
from contextlib import contextmanager, nullcontext

import torch

import casa

MARK = 2  # the image marker's id in the graders' models
REFERENCE = {name: getattr(casa, name) for name in ("may_attend", "rope", "stream_slots", "group_by_window")}
REFERENCE["extend_window"] = casa.LayerCache.extend_window
# The graders' models: tokens per image N = (image_size / 8) ** 2, so 4, 1 and 9; 2, 1 and 3 layers; 1, 2 or 4 heads
MODELS = [dict(image_size=16, n_layer=2, n_head=2, n_embd=32, rope_base=10000.0),
          dict(image_size=8, n_layer=1, n_head=1, n_embd=16, rope_base=500.0),
          dict(image_size=24, n_layer=3, n_head=4, n_embd=48, rope_base=1e6)]


class Wrong(Exception):
    """What is wrong, in one line."""


@functools.lru_cache(maxsize=None)  # built once per process: graders never change a model's weights in place
def tiny_model(fusion, seed=0, image_size=16, n_layer=2, n_head=2, n_embd=32, rope_base=10000.0):
    torch.manual_seed(seed)
    return casa.VLM(casa.VLMConfig(image_size=image_size, patch_size=8, vit_layers=1, vit_dim=16, vit_heads=2,
                                   n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=12,
                                   image_token_id=MARK, fusion=fusion, rope_base=rope_base)).eval()


def describe(config):
    """A model's shape in a few words, for messages."""
    return (f"N={(config.image_size // config.patch_size) ** 2}, {config.n_layer} layer(s), "
            f"{config.n_head} head(s), base {config.rope_base:g}")


@contextmanager
def swapped(owner, name, fn):
    old = getattr(owner, name)
    setattr(owner, name, fn)
    try:
        yield
    finally:
        setattr(owner, name, old)


@contextmanager
def during(where):
    """Name the situation when the student's code (or the model around it) raises, in one line."""
    try:
        yield
    except (Wrong, NotImplementedError):
        raise
    except Exception as e:
        detail = (str(e).strip().splitlines() or [""])[0][:100]
        raise Wrong(f"{where}: raised {type(e).__name__}: {detail}") from e


def at(where, row=None):
    """A situation's words (see situations()), for one of its rows or for the whole call."""
    return where.format(row="" if row is None else f"row {row} of ")


def check_tensor(out, shape, dtype, what):
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise Wrong(f"{what} must be a {tuple(shape)} {dtype} tensor, got {got}")


def on_inputs_device(fn, args, what):
    """fn must build its tensors on its inputs' device: a GPU run puts the inputs on cuda, and a tensor built there
    without device= (or with device="cpu") lands on the CPU. Two tries make the same mix of devices here: the inputs
    on 'meta' (shapes only) while new tensors land on the CPU; then the inputs on the CPU while new tensors land on
    'meta', which also runs code that reads values (a 'meta' input cannot be read)."""
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    for inputs, default in ((meta, "cpu"), (args, "meta")):
        try:
            with torch.device(default):
                out = fn(*inputs)
        except NotImplementedError:  # a value read from 'meta', or a meta tensor moved with .to(): fine on a GPU
            continue
        except Exception as e:
            if "device" in str(e):
                raise Wrong(f"{what} on inputs of another device (not the CPU) failed: build every tensor on the "
                            f"inputs' device ({type(e).__name__}: {str(e).strip().splitlines()[0][:80]})")
            continue  # e.g. a value read from a 'meta' input: the other try runs it
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type == default:
                raise Wrong(f"{what} on inputs of another device returned a tensor on another device: build it "
                            "on the inputs' device")


def argument_names(fn_name):
    return list(inspect.signature(REFERENCE[fn_name]).parameters)


def called(fn, fn_name, args, where):
    """fn(*args) in a situation, on copies of args: a function that writes into its inputs (unsqueeze_, +=) spoils
    its caller's tensors, and is named."""
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with during(where):
        out = fn(*copies)
    for name, a, copy in zip(argument_names(fn_name), args, copies):
        if isinstance(a, torch.Tensor) and (a.shape != copy.shape or not torch.equal(a, copy)):
            raise Wrong(f"{where}: {fn_name} changed its argument {name} in place: its caller still needs it, so "
                        "build new tensors instead")
    return out


def repeatable(fn, fn_name, args, where):
    """fn called twice on the same arguments must answer the same: no state kept between calls."""
    first, again = called(fn, fn_name, args, where), called(fn, fn_name, args, where)
    pairs = zip(first, again) if isinstance(first, tuple) and isinstance(again, tuple) else [(first, again)]
    if not all(torch.equal(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a == b
               for a, b in pairs):
        raise Wrong(f"{where}: {fn_name} answered differently when called again on the same arguments: compute "
                    "from the arguments alone, keeping nothing between calls")


# ------------------------------------------------------------------------------------------------ batches, streams


def shown(ids):
    """A call's tokens as a student reads them, e.g. [5, <image>, 7]."""
    return "[" + ", ".join("<image>" if t == MARK else str(t) for t in ids) + "]"


def random_batch(g, rows, length, image_size):
    """A training batch of `rows` rows: each row holds 0-3 images at random places (row 0 fewer than the widest
    row), then text padding; and the images in the order of their markers."""
    counts = [g.randint(0, 2)] + [g.randint(0, 3) for _ in range(rows - 1)]
    counts[g.randrange(1, rows)] = 3  # some row after row 0 spans the most windows
    idx = []
    for n in counts:
        row = [g.randint(3, 11) for _ in range(length)]
        for at in g.sample(range(length - 2), n):
            row[at] = MARK
        idx.append(row)
    images = torch.rand(sum(counts), 3, image_size, image_size, generator=torch.Generator().manual_seed(len(idx)))
    return torch.tensor(idx), images


# A live stream's calls: the prompt, decoded tokens one at a time, and each turn the last token of a window then
# the next frame's marker in the same call; a call may also open two windows, or start with text before any image.
STREAMS = [["text", "marker text", "token", "token", "text marker", "token", "marker marker text", "token"],
           ["marker", "text", "token marker", "text", "token", "text marker text", "token"],
           ["token", "token marker", "token", "marker text marker", "token", "token marker", "token"]]


def random_stream(g, template, rows=2):
    """A cached stream of two rows (cached decoding needs the markers at the same places in every row): a list of
    calls, each (B, t) ids, and each row's frames."""
    calls = []
    for kinds in template:
        parts = [[MARK] if kind == "marker" else [None] * (g.randint(2, 3) if kind == "text" else 1)
                 for kind in kinds.split()]
        calls.append(sum(parts, []))
    ids = [[[t if t == MARK else g.randint(3, 11) for t in call] for _ in range(rows)] for call in calls]
    n = sum(call.count(MARK) for call in calls)
    return [torch.tensor(c) for c in ids], torch.rand(rows, n, 3, 16, 16, generator=torch.Generator().manual_seed(n))


def frames_for(frames, image_size):
    return torch.nn.functional.interpolate(frames.flatten(0, 1), size=image_size).view(*frames.shape[:3],
                                                                                     image_size, image_size)


def stream_calls(calls, frames):
    """(ids, images) of each call, the images in the order of their markers (row 0's, then row 1's, ...)."""
    done = 0
    for ids in calls:
        n = int((ids[0] == MARK).sum())
        yield ids, frames[:, done:done + n].flatten(0, 1) if n else None
        done += n


@torch.no_grad()
def check_stream(model, calls, frames, swap, says, reference=None, after=None):
    """The stream fed call by call through a cache, with the student's function swapped in (swap None: the
    project's own), against the whole stream at once through `reference` (default: the same model without the
    swap). `says` names the mistake; after(i, where, cache), if given, checks the cache after call i."""
    frames = frames_for(frames, model.config.image_size)
    want = (reference or model)(torch.cat(calls, 1), frames.flatten(0, 1))[0]
    cache, done = model.new_cache(), 0
    with (swap or nullcontext)():
        for i, (ids, images) in enumerate(stream_calls(calls, frames)):
            where = (f"the {model.config.fusion} model's cached call {i + 1} {shown(ids[0].tolist())} "
                     f"({describe(model.config)})")
            with during(where):
                got = model(ids, images, cache=cache)[0]
            if not torch.allclose(got, want[:, done:done + ids.size(1)], atol=1e-4):
                raise Wrong(f"{where}: {says}")
            if after:
                after(i, where, cache)
            done += ids.size(1)


@torch.no_grad()
def check_batch(model, idx, images, swap, says, reference=None):
    """The whole batch at once (training, prefill), the student's function swapped in, against `reference`."""
    want = (reference or model)(idx, images)[0]
    where = f"a {idx.size(0)}-row batch of the {model.config.fusion} model ({describe(model.config)})"
    with swap(), during(where):
        got = model(idx, images)[0]
    for b in range(idx.size(0)):
        if got.shape != want.shape or not torch.allclose(got[b], want[b], atol=1e-4):
            raise Wrong(f"row {b} of {where}: {says}")


def check_model(fn_name, fn, fusions, says, prepare=None):
    """Every model of MODELS, each fusion: a batch and a cached stream with fn swapped in for casa.<fn_name>.
    prepare(model) -> (model to run with fn, reference model), for graders that change the weights (rope)."""
    g = random.Random(fn_name)
    for fusion in fusions:
        for k, config in enumerate(MODELS):
            model = tiny_model(fusion, seed=k, **config)
            student, reference = prepare(model) if prepare else (model, None)
            swap = lambda: swapped(casa, fn_name, fn)  # noqa: E731
            check_batch(student, *random_batch(g, 3, 9, config["image_size"]), swap, says, reference)
            check_stream(student, *random_stream(g, STREAMS[k]), swap, says, reference)


def situations(fn_name, fusions):
    """Every call the project's own code makes to casa.<fn_name> in check_model's batches and streams, as
    (where, the call's arguments): where the real code path puts the student's function. Pass the arguments to
    the student through called(), which copies them."""
    return recorded(fn_name, tuple(fusions))


@functools.lru_cache(maxsize=None)
@torch.no_grad()
def recorded(fn_name, fusions):
    calls, where, g = [], [None, 0], random.Random(fn_name)
    def record(*args):
        rows = next(a for a in args if isinstance(a, torch.Tensor)).size(0)
        calls.append((where[0] if rows == where[1] else  # block-wise training regroups the batch, a window a row
                      where[0].replace("{row}", "{row}the block-wise regrouping (a window a row) of "), args))
        return REFERENCE[fn_name](*args)
    with swapped(casa, fn_name, record):
        for fusion in fusions:
            for k, config in enumerate(MODELS):
                model = tiny_model(fusion, seed=k, **config)
                idx, images = random_batch(g, 3, 9, config["image_size"])
                where[:] = f"{{row}}a 3-row batch of the {fusion} model ({describe(model.config)})", 3
                model(idx, images)
                stream, frames = random_stream(g, STREAMS[k])
                cache = model.new_cache()
                for i, (ids, images) in enumerate(stream_calls(stream, frames_for(frames, config["image_size"]))):
                    where[:] = (f"{{row}}the {fusion} model's cached call {i + 1} {shown(ids[0].tolist())} "
                                f"({describe(model.config)})"), ids.size(0)
                    model(ids, images, cache=cache)
    return calls
