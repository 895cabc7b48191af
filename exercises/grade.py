"""
Grade the exercises: each check swaps the student's function into casa.py and says in one line what is wrong.

    make grade EX=1                     # or: python exercises/grade.py --ex=1   (--ex=may_attend works too)
    make grade                          # every exercise, one line each

An exercise passes when its function gives exactly what the project's own code gives, key by key and output by
output. Exit status 0 when every graded exercise passes, 1 otherwise (exercises/README.md: the teacher's guide).
"""
import importlib.util
import json
import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import casa  # noqa: E402
from common import UsageError, build, parse_options, run_script  # noqa: E402

MARK, N = 2, 4  # the image marker's id in the example models, and their tokens per image (16 px, 8 px patches)
REFERENCE = {name: getattr(casa, name) for name in ("may_attend", "rope", "stream_slots", "group_by_window")}
REFERENCE["extend_window"] = casa.LayerCache.extend_window


class Wrong(Exception):
    """What is wrong, in one line."""


@dataclass
class GradeOptions:
    ex: str = "all"  # an exercise number (1-7), its function's name, or all


# ------------------------------------------------------------------------------------------------ helpers


def tiny_model(fusion, seed=0):
    torch.manual_seed(seed)
    return casa.VLM(casa.VLMConfig(image_size=16, patch_size=8, vit_layers=1, vit_dim=32, vit_heads=2, n_layer=2,
                                   n_head=2, n_embd=32, vocab_size=12, image_token_id=MARK, fusion=fusion)).eval()


def example_batch():
    """Two rows, images in different places (3 in all), the second row padded at the end."""
    idx = torch.tensor([[5, MARK, 6, 7, MARK, 8, 9, 10], [MARK, 5, 6, 7, 8, 9, 0, 0]])
    return idx, torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@contextmanager
def swapped(owner, name, fn):
    old = getattr(owner, name)
    setattr(owner, name, fn)
    try:
        yield
    finally:
        setattr(owner, name, old)


@torch.no_grad()
def same_outputs(fusions, swap, says, reference=lambda model: nullcontext()):
    """Every fusion's logits on the example batch, with the student's function swapped in, against the project's
    (reference(model) may change the reference run, e.g. to the dense mask)."""
    idx, images = example_batch()
    for fusion in fusions:
        model = tiny_model(fusion)
        with reference(model):
            want = model(idx, images)[0]
        with swap():
            got = model(idx, images)[0]
        if got.shape != want.shape or not torch.allclose(got, want, atol=1e-5):
            raise Wrong(says.format(fusion=fusion))


def check_tensor(out, shape, dtype, what):
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise Wrong(f"{what} must be a {tuple(shape)} {dtype} tensor, got {got}")


# ------------------------------------------------------------------------------------------------ 1: may_attend


def example_stream():
    """Two rows of text with two images each: the queries (every token), and the keys of each kind of attention
    with whether each key is an image token. A third image slot is padding (window NO_IMAGE)."""
    is_image = torch.tensor([[0, 0, 1, 0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    pos, win = torch.arange(9).expand(2, 9), is_image.long().cumsum(1)
    image_pos = torch.stack([row.nonzero().flatten() for row in is_image])  # (2, 2) marker positions
    image_pos = torch.cat([image_pos, torch.zeros(2, 1, dtype=torch.long)], 1).repeat_interleave(2, 1)
    image_win = torch.tensor([[1, 2, casa.NO_IMAGE]] * 2).repeat_interleave(2, 1)
    images = torch.ones_like(image_pos, dtype=torch.bool)
    keys = {"self": (pos, win, torch.zeros_like(pos, dtype=torch.bool)),
            "cross": (image_pos, image_win, images),
            "casa": (torch.cat([image_pos, pos], 1), torch.cat([image_win, win], 1),
                     torch.cat([images, torch.zeros_like(pos, dtype=torch.bool)], 1))}
    return pos, win, keys


def mask_error(kind, got, qp, qw, kp, kw, image):
    """(rank, one line) for a wrong mask cell; the lowest rank is reported (the most telling mistake first)."""
    if got:  # the query saw a key it may not see
        if kw < qw and kw != casa.NO_IMAGE:
            return ((1, f"an image of an earlier window reached a {kind} query: only the latest image counts")
                    if image else (0, f"text of an earlier window reached a {kind} query"))
        if kp > qp:
            return 2, f"a {kind} query at position {qp} saw a later key (position {kp}): the future must stay hidden"
        if kw == casa.NO_IMAGE:
            return 3, f"a {kind} query saw a padding key (window {casa.NO_IMAGE}): no query may ever see one"
        return 4, f"a {kind} query (position {qp}, window {qw}) saw a key it may not (position {kp}, window {kw})"
    if kind == "self":
        return 5, f"a self-attention query at position {qp} missed an earlier key (position {kp}): it sees the stream"
    if image:
        return 5, f"a {kind} query (window {qw}) missed the image of its own window"
    return 5, "a casa query missed itself" if kp == qp else "a casa query missed earlier text of its own window"


def check_may_attend(fn):
    q_pos, q_win, keys = example_stream()
    for kind, (k_pos, k_win, is_image) in keys.items():
        got, want = fn(kind, q_pos, q_win, k_pos, k_win), REFERENCE["may_attend"](kind, q_pos, q_win, k_pos, k_win)
        check_tensor(got, want.shape, torch.bool, f"may_attend({kind!r}, ...)")
        errors = [mask_error(kind, bool(got[b, 0, i, j]), int(q_pos[b, i]), int(q_win[b, i]), int(k_pos[b, j]),
                             int(k_win[b, j]), bool(is_image[b, j])) for b, _, i, j in (got != want).nonzero().tolist()]
        if errors:
            raise Wrong(min(errors)[1])
    try:
        fn("concat", q_pos, q_win, q_pos, q_win)
    except ValueError:
        pass
    else:
        raise Wrong("may_attend('concat', ...) must raise ValueError: a typo must not silently pick some mask")
    same_outputs(casa.FUSIONS, lambda: swapped(casa, "may_attend", fn),
                 "the masks look right, but the {fusion} model computes something else with them")


# ------------------------------------------------------------------------------------------------ 2: rope


def check_rope(fn):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 6, 8, generator=g)
    pos = torch.randint(0, 50, (2, 6), generator=g)
    pos[1, -1] = 10 ** 6  # a live stream's positions never stop growing
    out = fn(x, pos, 10000.0)
    check_tensor(out, x.shape, x.dtype, "rope(x, pos, base)")
    if torch.allclose(out, x):
        raise Wrong("rope returned x unchanged: every position but 0 must turn the channel pairs")
    if not torch.allclose(fn(x, torch.zeros_like(pos), 10000.0), x):
        raise Wrong("rope at position 0 must leave x unchanged (every angle is 0)")
    pairs = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2
    if not torch.allclose(pairs(out), pairs(x), atol=1e-4):
        raise Wrong("rope must rotate the channel pairs (i, i + D/2), keeping each pair's length; yours changes them")
    q, k = torch.randn(1, 1, 6, 8, generator=g), torch.randn(1, 1, 6, 8, generator=g)
    p = torch.randint(0, 50, (1, 6), generator=g)
    scores = lambda shift: fn(q, p + shift, 100.0) @ fn(k, p + shift, 100.0).transpose(-1, -2)
    if not torch.allclose(scores(0), scores(7), atol=1e-4):
        raise Wrong("q . k must depend only on the distance between positions: shifting both by 7 changed it")
    if not torch.allclose(out, REFERENCE["rope"](x, pos, 10000.0), atol=1e-5):
        raise Wrong("a rotation, but not RoPE's: turn pair (i, i + D/2) by pos * base ** (-i / (D/2))")
    if fn(x.bfloat16(), pos, 10000.0).dtype != torch.bfloat16:
        raise Wrong("rope must return x's dtype (bfloat16 in, bfloat16 out)")
    same_outputs(casa.FUSIONS, lambda: swapped(casa, "rope", fn), "with your rope the {fusion} model's output differs")


# ------------------------------------------------------------------------------------------------ 3: insertion


def check_stream_slots(fn):
    plain = torch.zeros(2, 5, dtype=torch.bool)
    got = fn(plain, N)
    check_tensor(got, plain.shape, torch.long, "stream_slots(is_image, n)")
    if not torch.equal(got, torch.arange(5).expand(2, 5)):
        raise Wrong("without images every token must keep its own slot (0, 1, 2, ...)")
    is_image = example_batch()[0] == MARK
    got, want = fn(is_image, N), REFERENCE["stream_slots"](is_image, N)
    check_tensor(got, want.shape, torch.long, "stream_slots(is_image, n)")
    for b, t in (got != want).nonzero().tolist()[:1]:
        what = (f"the marker at index {t} must land right after its image's {N} tokens" if is_image[b, t]
                else f"the text token at index {t} must move {N} slots later for every marker before it")
        raise Wrong(f"row {b}: {what}: slot {int(want[b, t])}, got {int(got[b, t])}")
    same_outputs(["insertion"], lambda: swapped(casa, "stream_slots", fn),
                 "the slots look right, but the insertion model computes something else with them")


# ------------------------------------------------------------------------------------------------ 4: cache policy


@torch.no_grad()
def check_extend_window(fn):
    """A stream fed in pieces through a cache (prompt, decoded tokens, new images) against the whole stream at once."""
    pieces = [[5, 6], [MARK, 7, 8], [9], [MARK, 10], [5], [6]]
    frames = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    def returns_keys(self, kv, latest_window):
        seen = fn(self, kv, latest_window)
        if not isinstance(seen, casa.KV):
            raise Wrong(f"extend_window must return a casa.KV (the keys this call's queries may see), got "
                        f"{type(seen).__name__}")
        return seen
    for fusion in ("cross", "casa"):
        model = tiny_model(fusion)
        full = torch.tensor([sum(pieces, [])])
        want = model(full, frames)[0]
        cache, done, shown = model.new_cache(), 0, 0
        with swapped(casa.LayerCache, "extend_window", returns_keys):
            for piece in pieces:
                n_images = piece.count(MARK)
                got = model(torch.tensor([piece]), frames[shown:shown + n_images] if n_images else None,
                            cache=cache)[0]
                done, shown = done + len(piece), shown + n_images
                text = len(pieces_since_last_image(sum(pieces, [])[:done]))
                keep = (N if shown else 0) + (text if fusion == "casa" else 0)
                for layer in cache.layers:
                    window = layer.window.view() if len(layer.window) else None
                    if window is not None and bool((window.win != cache.window).any()):
                        raise Wrong(f"after a new image the {fusion} cache still holds keys of an earlier window")
                    if len(layer.window) != keep:
                        raise Wrong(f"the {fusion} cache holds {len(layer.window)} keys of the current window after "
                                    f"{done} tokens; it must keep {keep}"
                                    + (": the image's and the window's text so far" if fusion == "casa" else
                                       ": the latest image's"))
                if not torch.allclose(got, want[:, done - len(piece):done], atol=1e-5):
                    raise Wrong(f"cached {fusion} logits differ from computing the whole stream at once: "
                                "the queries of a call must see the earlier keys of their window and this call's")


def pieces_since_last_image(ids):
    """The tokens of the latest window (from its marker on; all of them before the first image)."""
    return ids[max((i for i, t in enumerate(ids) if t == MARK), default=0):]


# ------------------------------------------------------------------------------------------------ 5: block-wise


def check_group_by_window(fn):
    win = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2, 2, 2]])
    out = fn(win)
    if not isinstance(out, tuple) or len(out) != 3:
        raise Wrong("group_by_window must return a tuple (group, slot, W)")
    (group, slot, W), (want_group, want_slot, want_W) = out, REFERENCE["group_by_window"](win)
    if W != want_W:
        raise Wrong(f"W must be the most windows any row spans ({want_W}), got {W}")
    check_tensor(group, win.shape, torch.long, "group")
    check_tensor(slot, win.shape, torch.long, "slot")
    for b, t in (group != want_group).nonzero().tolist()[:1]:
        raise Wrong(f"token {t} of row {b} (window {int(win[b, t])}) must go to row {int(want_group[b, t])} "
                    f"(row * W + its window - the row's first window), got {int(group[b, t])}")
    for b, t in (slot != want_slot).nonzero().tolist()[:1]:
        raise Wrong(f"token {t} of row {b} must sit at slot {int(want_slot[b, t])} of its window (slots count "
                    f"from 0 at each window's first token), got {int(slot[b, t])}")

    @contextmanager
    def dense(model):  # the reference: the same weights through one dense mask
        for block in model.blocks:
            block.block_wise = False
        yield
        for block in model.blocks:
            block.block_wise = True
    same_outputs(("cross", "casa"), lambda: swapped(casa, "group_by_window", fn),
                 "with your grouping, block-wise {fusion} attention differs from the dense mask", reference=dense)


# ------------------------------------------------------------------------------------------------ 6: cache size


@torch.no_grad()
def measured_cache(fusion, turns, tokens_per_turn, max_text=None):
    """What a real KVCache holds after `turns` turns of (a marker and its frame, then the text tokens)."""
    model = tiny_model(fusion)
    cache = model.new_cache(max_text=max_text)
    frame = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for _ in range(turns):
        model(torch.tensor([[MARK] + [5] * tokens_per_turn]), frame, cache=cache)
    return cache.stats()


def check_predicted_cache(fn):
    cfg = tiny_model("casa").config
    for turns, tokens, max_text in ((1, 3, None), (4, 2, None), (6, 3, 9)):
        for fusion in casa.FUSIONS:
            got = fn(fusion, turns, tokens, cfg.n_image_tokens, cfg.n_layer, cfg.n_embd, max_text)
            if not isinstance(got, dict) or not all(isinstance(got.get(k), int) for k in ("tokens", "bytes")):
                raise Wrong('predicted_cache must return {"tokens": int, "bytes": int}')
            real = measured_cache(fusion, turns, tokens, max_text)
            case = (f"{fusion} after {turns} turn{'s' * (turns > 1)} of {tokens} tokens"
                    + (f" (max_text={max_text})" if max_text else ""))
            for key in ("tokens", "bytes"):
                if got[key] != real[key]:
                    raise Wrong(f"{case}: you predict {got[key]} cached {key}, the cache holds {real[key]}")


# ------------------------------------------------------------------------------------------------ 7: experiment


def check_answers(fn):
    a = fn()
    keys = ("eval_json", "count_accuracy", "count_blind", "best_blind_task", "why")
    if not isinstance(a, dict) or set(a) != set(keys):
        raise Wrong(f"answers() must return a dict with the keys {', '.join(keys)}")
    for key in keys:
        if a[key] is None:
            raise Wrong(f"answers()[{key!r}] is still None")
    if not os.path.isfile(a["eval_json"]):
        raise Wrong(f"no file {a['eval_json']}: train a model first (the exercise says how)")
    with open(a["eval_json"]) as f:
        result = json.load(f)
    for key, part in (("count_accuracy", "accuracy"), ("count_blind", "blind_accuracy")):
        real = result[part].get("count")
        if real is None:
            raise Wrong(f"{a['eval_json']} has no count task: train with --tasks including count")
        if not isinstance(a[key], (int, float)) or abs(a[key] - real) > 0.005:
            raise Wrong(f"{key} is {a[key]!r}, but {part}['count'] in {a['eval_json']} is {real:.3f}")
    best = max(result["blind_accuracy"], key=result["blind_accuracy"].get)
    if a["best_blind_task"] != best:
        raise Wrong(f"best_blind_task is {a['best_blind_task']!r}; the highest blind accuracy in "
                    f"{a['eval_json']} is {best}'s ({result['blind_accuracy'][best]:.1%})")
    if len(str(a["why"]).split()) < 8:
        raise Wrong("write your explanation in 'why': a sentence or two")


# ------------------------------------------------------------------------------------------------ main

EXERCISES = {  # number: (file, the function the student writes, its grader)
    1: ("ex1_may_attend.py", "may_attend", check_may_attend),
    2: ("ex2_rope.py", "rope", check_rope),
    3: ("ex3_insertion.py", "stream_slots", check_stream_slots),
    4: ("ex4_cache_policy.py", "extend_window", check_extend_window),
    5: ("ex5_block_wise.py", "group_by_window", check_group_by_window),
    6: ("ex6_cache_size.py", "predicted_cache", check_predicted_cache),
    7: ("ex7_blind_baseline.py", "answers", check_answers),
}


def student_function(number):
    file, name, _ = EXERCISES[number]
    spec = importlib.util.spec_from_file_location(file[:-3], os.path.join(HERE, file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def grade(number, fn=None):
    """(passed, one line) for an exercise; fn defaults to the student's function in its file."""
    file, name, check = EXERCISES[number]
    try:
        check(student_function(number) if fn is None else fn)
    except Wrong as e:
        return False, f"exercise {number} ({file}): not yet: {e}"
    except NotImplementedError:
        return False, f"exercise {number} ({file}): not yet: {name} still raises NotImplementedError; fill it in"
    except Exception as e:  # the student's code failed: say where, in one line
        detail = (str(e).strip().splitlines() or [""])[0]
        return False, f"exercise {number} ({file}): not yet: {name} raised {type(e).__name__}: {detail}"
    return True, f"exercise {number} ({file}): passed"


def main(argv):
    _, (options,) = parse_options(argv, [("options", GradeOptions)], __doc__)
    args = build(GradeOptions, options)
    names = {name: number for number, (_, name, _) in EXERCISES.items()}
    if args.ex == "all":
        numbers = list(EXERCISES)
    elif args.ex.isdigit() and int(args.ex) in EXERCISES:
        numbers = [int(args.ex)]
    elif args.ex in names:
        numbers = [names[args.ex]]
    else:
        raise UsageError(f"--ex={args.ex}: no such exercise (1-{len(EXERCISES)}, a function name, or all)")
    results = [grade(number) for number in numbers]
    for _, line in results:
        print(line)
    if not all(passed for passed, _ in results):
        sys.exit(1)


if __name__ == "__main__":
    run_script(main, "grade.py")
