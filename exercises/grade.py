"""
Grade the exercises: each check swaps the student's function into casa.py and says in one line what is wrong.

    make grade EX=1                     # or: python exercises/grade.py 1, or --ex=1 (--ex=may_attend works too)
    make grade                          # every exercise, one line each

An exercise passes when its function gives what the project's own code gives, in every situation the real code
path puts it in (checks.py: several model sizes, batch layouts, cached streams), key by key and output by output.
Exit status 0 when every graded exercise passes, 1 otherwise (exercises/README.md: the teacher's guide).
"""
import copy
import importlib.util
import json
import math
import os
import random
import re
import sys
from dataclasses import dataclass

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import casa  # noqa: E402
from checks import (MARK, MODELS, REFERENCE, STREAMS, Wrong, at, called, check_model,  # noqa: E402
                    check_stream, check_tensor, during, on_inputs_device, random_stream, repeatable, situations,
                    swapped, tiny_model)
from common import UsageError, build, parse_options, run_script  # noqa: E402


class ForTheTeacher(Exception):
    """An answer the grader cannot check: a person must read it."""


@dataclass
class GradeOptions:
    ex: str = "all"  # an exercise number (1-7), its function's name, or all; also as the first argument alone


# ------------------------------------------------------------------------------------------------ 1: may_attend


def image_keys(kind, k_pos, k_win):
    """(B, Tk) bool, which keys are image tokens: all of cross's; casa's are laid out image first, then text, so
    an image key has a later key at its position and window (its marker, or the rest of its image)."""
    if kind != "casa":
        return torch.full_like(k_pos, kind == "cross", dtype=torch.bool)
    same = (k_pos[:, :, None] == k_pos[:, None, :]) & (k_win[:, :, None] == k_win[:, None, :])
    return (same & torch.ones_like(same[0]).triu(1)).any(-1)


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
        return 5, (f"a self-attention query at position {qp} missed " +
                   ("itself" if kp == qp else f"an earlier key (position {kp}): it sees the whole stream so far"))
    if image:
        return 5, f"a {kind} query (window {qw}) missed the image of its own window"
    return 5, "a casa query missed itself" if kp == qp else "a casa query missed earlier text of its own window"


def orders(q_pos, q_win, k_pos, k_win, image):
    """A call as the code makes it, then with its rows and with its keys in reverse order: a mask follows the
    positions and windows it is given, never the keys' order nor an earlier call. Yields (words for messages, what a
    mask that stays the first order's must do instead, the arguments, which keys are images)."""
    yield "", "", (q_pos, q_win, k_pos, k_win), image
    yield (", its rows in reverse order", "keeping nothing from earlier calls",
           (q_pos.flip(0), q_win.flip(0), k_pos.flip(0), k_win.flip(0)), image.flip(0))
    yield (", its keys in reverse order", "from the keys' positions and windows, not their order",
           (q_pos, q_win, k_pos.flip(1), k_win.flip(1)), image.flip(1))


def check_may_attend(fn):
    errors = []  # (rank, situation, its one line): the most telling mistake of every situation is reported
    for where, (kind, *args) in situations("may_attend", casa.FUSIONS):
        for suffix, how, (q_pos, q_win, k_pos, k_win), image in orders(*args, image_keys(kind, *args[2:])):
            got = called(fn, "may_attend", (kind, q_pos, q_win, k_pos, k_win), at(where + suffix))
            want = REFERENCE["may_attend"](kind, q_pos, q_win, k_pos, k_win)
            check_tensor(got, want.shape, torch.bool, f"{at(where + suffix)}: may_attend({kind!r}, ...)")
            real = q_pos < casa.FAR_AWAY  # insertion's padding queries are thrown away: their masks do not matter
            wrong = (got != want) & real[:, None, :, None]
            if not suffix:
                first, first_right = got, not wrong.any()
            elif wrong.any() and first_right and torch.equal(got, first):  # ranked after every broken rule
                errors.append((6, len(errors), f"{at(where + suffix)}: may_attend({kind!r}, ...) returned the "
                                               f"mask of the first order: compute it {how}"))
                continue
            if wrong.any():
                rank, line, b = min(mask_error(kind, bool(got[b, 0, i, j]), int(q_pos[b, i]), int(q_win[b, i]),
                                               int(k_pos[b, j]), int(k_win[b, j]), bool(image[b, j])) + (b,)
                                    for b, _, i, j in wrong.nonzero().tolist())
                errors.append((rank, len(errors), f"{at(where + suffix, b)}: {line}"))
    if errors:
        raise Wrong(min(errors)[2])
    q = torch.arange(3).expand(2, 3)
    try:
        fn("concat", q, q, q, q)
    except ValueError:
        pass
    else:
        raise Wrong("may_attend('concat', ...) must raise ValueError: a typo must not silently pick some mask")
    for kind in ("self", "cross", "casa"):
        on_inputs_device(fn, (kind, q, q, q, q), f"may_attend({kind!r}, ...)")
    check_model("may_attend", fn, casa.FUSIONS, "the masks look right, but the model computes something else")


# ------------------------------------------------------------------------------------------------ 2: rope

# (B, H, L, D, base, dtype) of the inputs rope is tried on; positions up to 10 ** 6 (a live stream's never stop)
ROPE_CASES = [(2, 2, 6, 8, 10000.0, torch.float32), (3, 1, 5, 16, 100.0, torch.float32),
              (1, 4, 3, 4, 1e6, torch.float32), (3, 2, 6, 8, 10000.0, torch.bfloat16)]


def rope_layout(fn, D, base):
    """Which channels the student's rope pairs, read off position 1: each basis vector turns into its partner.
    Any pairing is RoPE if each pair turns by one of RoPE's angles, each angle once. Returns `order` (D,), the
    student's channel for each of the reference's (i and i + D/2 for the pair turning by base ** (-i / (D/2)))."""
    eye = torch.eye(D)[None, None]
    out = fn(eye, torch.ones(1, D, dtype=torch.long), base)
    check_tensor(out, eye.shape, eye.dtype, f"rope(x, pos, base) for a {tuple(eye.shape)} x (1 row, 1 head, {D} "
                 "positions)")
    R = out[0, 0].double()  # row c: where channel c goes
    if torch.allclose(R, torch.eye(D, dtype=R.dtype)):
        raise Wrong(f"rope at position 1 returned x unchanged (D={D}): every pair of channels must turn")
    half, order = D // 2, [None] * D
    angles = base ** (-torch.arange(half, dtype=torch.float64) / half)
    for c in range(D):
        rest = R[c].clone()
        rest[c] = 0
        p = int(rest.abs().argmax())
        rest[p] = 0
        pair = R[[c, p]][:, [c, p]]  # must be [[cos, sin], [-sin, cos]]
        if (p == c or rest.abs().max() > 1e-5 or (pair.T @ pair - torch.eye(2, dtype=R.dtype)).abs().max() > 1e-4
                or abs(pair[0, 0] - pair[1, 1]) > 1e-5):
            raise Wrong(f"rope must turn pairs of channels, keeping each pair's length (D={D}): at position 1 "
                        f"channel {c} becomes {[round(v, 3) for v in R[c].tolist()]}")
        if R[c, p] < 0:
            continue  # the pair's second channel: the first one places both
        angle = math.atan2(R[c, p], R[c, c])
        i = int((angles.log() - math.log(max(angle, 1e-30))).abs().argmin())
        if abs(angle / angles[i] - 1) > 1e-3 or order[i] is not None:
            raise Wrong(f"a rotation, but not RoPE's (D={D}, base {base:g}): channels ({c}, {p}) turn by {angle:.3g} "
                        "rad per position; RoPE's pairs turn by base ** (-i / (D/2)), i = 0 .. D/2 - 1, each once")
        order[i], order[i + half] = c, p
    return torch.tensor(order)


def rope_truth(x, pos, base, order):
    """RoPE in float64, in the student's layout of pairs."""
    half = x.size(-1) // 2
    y = x.double()[..., order]
    angles = pos.double()[:, None, :, None] * base ** (-torch.arange(half, dtype=torch.float64) / half)
    y1, y2 = y[..., :half], y[..., half:]
    out = torch.empty_like(y)
    out[..., order] = torch.cat([y1 * angles.cos() - y2 * angles.sin(), y1 * angles.sin() + y2 * angles.cos()], -1)
    return out


def check_rope(fn):
    eye, one = torch.eye(8)[None, None], torch.ones(1, 8, dtype=torch.long)
    with during("rope on a (1, 1, 8, 8) float32 x, base 100 then 10000"):
        turned = fn(eye, one, 100.0)
        if not torch.equal(turned, eye) and torch.allclose(turned, fn(eye, one, 10000.0)):
            raise Wrong("rope turned the pairs by the same angles with base 100 and base 10000 (D=8): use the base "
                        "it is given, keeping nothing between calls")
    g = torch.Generator().manual_seed(2)
    for B, H, L, D, base, dtype in ROPE_CASES:
        x = (torch.rand(B, H, L, D, generator=g) * 1.4 - 0.7).to(dtype)  # every pair shorter than 1
        pos = torch.randint(0, 300, (B, L), generator=g)
        pos[-1, -1], pos[0, 0] = 10 ** 6, 0  # a long stream's position, in the last row (not row 0)
        where = f"rope on a {tuple(x.shape)} {str(dtype)[6:]} x, base {base:g}"
        with during(where):
            order = rope_layout(fn, D, base)
        out = called(fn, "rope", (x, pos, base), where)
        check_tensor(out, x.shape, dtype, f"rope(x, pos, base) for a {tuple(x.shape)} {dtype} x")
        # float32 angles of a position p are good to about 1e-7 p radians (the reference's too); bfloat16 rounds
        tol = (3e-2 if dtype == torch.bfloat16 else 1e-4) + 3e-7 * pos[:, None, :, None].double()
        err = (out.double() - rope_truth(x, pos, base, order)).abs() - tol
        if err.max() > 0:
            b, h, t, c = [int(i) for i in torch.unravel_index(err.argmax(), err.shape)]
            raise Wrong(f"at position {int(pos[b, t])} (row {b}, head {h}, {str(dtype)[6:]} x, D={D}, base {base:g}) "
                        f"channel {c} is off by {float(err[b, h, t, c] + tol[b, 0, t, 0]):.2g}"
                        + (": compute the angles in float32, then return x's dtype" if dtype != torch.float32
                           else ": the angle must be pos * base ** (-i / (D/2)) for that row's position"))
    on_inputs_device(lambda x, pos: fn(x, pos, 10000.0), (x, pos), "rope(x, pos, base)")

    def permuted(model):  # the same model in the student's layout of pairs: its q and k channels reordered
        D = model.config.n_embd // model.config.n_head
        order, student = rope_layout(fn, D, model.config.rope_base), copy.deepcopy(model)
        for attention in (m for m in student.blocks.modules() if isinstance(m, casa.Attention)):
            for proj in (attention.q_proj, attention.k_proj):
                w = proj.weight.data.view(attention.n_head, D, -1)
                proj.weight.data = torch.empty_like(w).index_copy_(1, order, w).flatten(0, 1)
        return student, model
    check_model("rope", fn, casa.FUSIONS, "with your rope the output differs", prepare=permuted)


# ------------------------------------------------------------------------------------------------ 3: insertion


def check_stream_slots(fn):
    calls = situations("stream_slots", ["insertion"])
    repeatable(fn, "stream_slots", calls[0][1], at(calls[0][0]))
    plain = torch.zeros(2, 5, dtype=torch.bool)
    got = called(fn, "stream_slots", (plain, 4), "a 2-row batch without images")
    check_tensor(got, plain.shape, torch.long, "stream_slots(is_image, n)")
    if not torch.equal(got, torch.arange(5).expand(2, 5)):
        raise Wrong("without images every token must keep its own slot (0, 1, 2, ...)")
    for where, (is_image, n) in calls:
        got = called(fn, "stream_slots", (is_image, n), at(where))
        want = REFERENCE["stream_slots"](is_image, n)
        check_tensor(got, want.shape, torch.long, "stream_slots(is_image, n)")
        for b, t in (got != want).nonzero().tolist()[:1]:
            what = (f"the marker at index {t} must land right after its image's {n} tokens" if is_image[b, t]
                    else f"the text token at index {t} must move {n} slots later for every marker before it")
            raise Wrong(f"{at(where, b)}: {what}: slot {int(want[b, t])}, got {int(got[b, t])}")
    on_inputs_device(fn, (plain, 4), "stream_slots(is_image, n)")
    check_model("stream_slots", fn, ["insertion"], "the slots look right, but the model computes something else")


# ------------------------------------------------------------------------------------------------ 4: cache policy


def check_extend_window(fn):
    """Streams fed call by call through a cache: the logits against the whole stream at once, and after every
    call, each layer's window buffer against what the project's policy keeps (the latest window's keys only)."""
    def returns_keys(self, kv, latest_window):
        seen = fn(self, kv, latest_window)
        if not isinstance(seen, casa.KV):
            raise Wrong(f"extend_window must return a casa.KV (the keys this call's queries may see), got "
                        f"{type(seen).__name__}")
        return seen
    g = random.Random(4)
    for fusion in ("cross", "casa"):
        for k, config in enumerate(MODELS):
            model, (calls, frames) = tiny_model(fusion, seed=k, **config), random_stream(g, STREAMS[k])
            kept = []  # after each call, each layer: how many keys the project's own policy keeps
            check_stream(model, calls, frames, None, "the project's own cache differs from the whole stream",
                         after=lambda i, where, cache: kept.append([len(layer.window) for layer in cache.layers]))

            def after(i, where, cache):
                for j, (layer, keep) in enumerate(zip(cache.layers, kept[i])):
                    if len(layer.window) and bool((layer.window.view().win != cache.window).any()):
                        raise Wrong(f"{where}: after it layer {j}'s cache still holds keys of an earlier window: a "
                                    "later query can never see them")
                    if len(layer.window) != keep:
                        raise Wrong(f"{where}: after it layer {j}'s cache holds {len(layer.window)} keys; it must keep "
                                    f"{keep}: " + ("the latest image's and its window's text so far" if fusion ==
                                                   "casa" else "the latest image's"))
            check_stream(model, calls, frames, lambda: swapped(casa.LayerCache, "extend_window", returns_keys),
                         "the logits differ from the whole stream at once: each query must see every key of its "
                         "own window, from earlier calls and from this one", after=after)


# ------------------------------------------------------------------------------------------------ 5: block-wise


def check_group_by_window(fn):
    examples = [(f"{{row}}the batch with windows {w}", (torch.tensor(w),))
                for w in ([[0, 0, 1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2, 2, 2]],
                          [[1, 1, 1, 1, 1, 1], [0, 1, 1, 2, 3, 3], [0, 0, 0, 0, 1, 1]],
                          [[0, 0, 0, 1, 1, 1], [1, 1, 2, 2, 3, 3]])]
    repeatable(fn, "group_by_window", examples[0][1], at(examples[0][0]))
    for where, (win,) in examples + situations("group_by_window", ("cross", "casa")):
        out = called(fn, "group_by_window", (win,), at(where))
        if not isinstance(out, tuple) or len(out) != 3:
            raise Wrong("group_by_window must return a tuple (group, slot, W)")
        (group, slot, W), (want_group, want_slot, want_W) = out, REFERENCE["group_by_window"](win)
        if type(W) is not int:
            raise Wrong(f"W must be a Python int (it sizes new tensors), got {type(W).__name__}")
        if W != want_W:
            widest = int((win[:, -1] - win[:, 0]).argmax())
            raise Wrong(f"{at(where, widest)} spans the most windows, {want_W}: W must be {want_W}, got {W}")
        check_tensor(group, win.shape, torch.long, "group")
        check_tensor(slot, win.shape, torch.long, "slot")
        for b, t in (group != want_group).nonzero().tolist()[:1]:
            raise Wrong(f"{at(where, b)}: its token {t} (window {int(win[b, t])}) must go to row "
                        f"{int(want_group[b, t])} (row * W + its window - the row's first window), got "
                        f"{int(group[b, t])}")
        for b, t in (slot != want_slot).nonzero().tolist()[:1]:
            raise Wrong(f"{at(where, b)}: its token {t} must sit at slot {int(want_slot[b, t])} of its window "
                        f"(slots count from 0 at each window's first token), got {int(slot[b, t])}")
    on_inputs_device(fn, examples[0][1], "group_by_window(win)")

    def dense(model):  # the reference: the same weights through one dense mask
        reference = copy.deepcopy(model)
        for block in reference.blocks:
            block.block_wise = False
        return model, reference
    check_model("group_by_window", fn, ("cross", "casa"),
                "with your grouping, block-wise attention differs from the dense mask", prepare=dense)


# ------------------------------------------------------------------------------------------------ 6: cache size

# (tokens per turn, max_text) of the streams measured on each model: no text, a rolling window shorter than the
# stream (and shorter than a casa window), one longer than the stream
CACHE_STREAMS = [(3, None), (2, 7), (0, None), (1, 100), (2, 2)]


@torch.no_grad()
def measured_caches(fusion, config, tokens, max_text, turns=6):
    """What a real KVCache holds after each of `turns` turns of (a marker and its frame, then the text tokens)."""
    model = tiny_model(fusion, **config)
    cache = model.new_cache(max_text=max_text)
    frame = torch.rand(1, 3, config["image_size"], config["image_size"], generator=torch.Generator().manual_seed(2))
    for _ in range(turns):
        model(torch.tensor([[MARK] + [5] * tokens]), frame, cache=cache)
        yield cache.stats()


def check_predicted_cache(fn):
    for k, config in enumerate(MODELS):
        for tokens, max_text in CACHE_STREAMS[k:k + 3]:
            for fusion in casa.FUSIONS:
                cfg = tiny_model(fusion, **config).config
                for turns, real in enumerate(measured_caches(fusion, config, tokens, max_text), 1):
                    got = fn(fusion, turns, tokens, cfg.n_image_tokens, cfg.n_layer, cfg.n_embd, max_text)
                    if not isinstance(got, dict) or not all(type(got.get(key)) is int for key in ("tokens", "bytes")):
                        raise Wrong(f'predicted_cache must return {{"tokens": int, "bytes": int}}, got {got!r:.60}')
                    case = (f"{fusion} after {turns} turn{'s' * (turns > 1)} of {tokens} tokens (N="
                            f"{cfg.n_image_tokens}, {cfg.n_layer} layer(s), n_embd {cfg.n_embd}, max_text={max_text})")
                    for key in ("tokens", "bytes"):
                        if got[key] != real[key]:
                            raise Wrong(f"{case}: you predict {got[key]} cached {key}, the cache holds {real[key]}")


# ------------------------------------------------------------------------------------------------ 7: experiment

# What lets a blind model score on a task: words of a reason about the task's answers (checked as word stems)
REASONS = ("prior", "common", "frequen", "few", "guess", "chance", "skew", "majority", "yes", "bias", "likel",
           "distribution", "possib", "small set", "limited", "option", "choice", "uniform", "balanced")
# The little words of any English sentence: an explanation with fewer than two of them is a list of words
SENTENCE = {"a", "an", "the", "is", "are", "so", "it", "its", "of", "to", "and", "or", "only", "than", "by", "can",
            "has", "have", "because", "which", "one", "most", "from", "without", "at", "on", "in", "be", "there"}


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
    blind = result["blind_accuracy"]
    best = sorted(task for task, acc in blind.items() if acc == max(blind.values()))  # ties: any of them
    if a["best_blind_task"] not in best:
        raise Wrong(f"best_blind_task is {a['best_blind_task']!r}; the highest blind accuracy in {a['eval_json']} "
                    f"is {' and '.join(best)}'s ({blind[best[0]]:.1%})")
    why = str(a["why"]).lower()
    words = set(re.findall(r"[a-z]+", why))
    if len(words) < 6:
        raise Wrong("write your explanation in 'why': a sentence or two")
    if len(words & SENTENCE) < 2:
        raise ForTheTeacher("'why' does not read as a sentence (no 'the', 'is', 'so', 'because'...); a person must "
                            "read it")
    task = a["best_blind_task"]
    if not re.search(r"\b" + task[:4], why) or not any(reason in why for reason in REASONS):
        raise ForTheTeacher(f"'why' does not name {task} and what about its answers lets a blind model score "
                            "(e.g. few possible answers, one far more common); a person must read it")


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
    except ForTheTeacher as e:
        return False, f"exercise {number} ({file}): the numbers are right; for the teacher to read: {e}"
    except NotImplementedError:
        return False, f"exercise {number} ({file}): not yet: {name} still raises NotImplementedError; fill it in"
    except Exception as e:  # the student's code failed: say where, in one line
        detail = (str(e).strip().splitlines() or [""])[0]
        return False, f"exercise {number} ({file}): not yet: {name} raised {type(e).__name__}: {detail}"
    return True, f"exercise {number} ({file}): passed"


def main(argv):
    if argv and not argv[0].startswith("-"):  # python exercises/grade.py 1
        argv = [f"--ex={argv[0]}"] + argv[1:]
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
