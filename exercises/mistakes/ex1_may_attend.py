"""Exercise 1 (may_attend): wrong answers and right ones written differently from casa.py's."""
import torch


def causal(q_pos, k_pos):
    return k_pos[:, None, :] <= q_pos[:, :, None]


def same_window(q_win, k_win):
    return k_win[:, None, :] == q_win[:, :, None]


def masks(self, cross, casa):
    """A may_attend from the three masks' rules, each a function of (q_pos, q_win, k_pos, k_win) -> (B, Tq, Tk)."""
    def may_attend(kind, *args):
        if kind not in ("self", "cross", "casa"):
            raise ValueError(kind)
        return {"self": self, "cross": cross, "casa": casa}[kind](*args)[:, None]
    return may_attend


RIGHT_SELF = lambda qp, qw, kp, kw: causal(qp, kp)  # noqa: E731
RIGHT_CROSS = lambda qp, qw, kp, kw: same_window(qw, kw)  # noqa: E731
RIGHT_CASA = lambda qp, qw, kp, kw: causal(qp, kp) & same_window(qw, kw)  # noqa: E731


def by_index(qp, qw, kp, kw):  # causal by index, as in a GPT without a cache: query i sees keys 0..i
    return torch.ones(qp.size(1), kp.size(1), dtype=torch.bool).tril().expand(qp.size(0), -1, -1)


def by_index_on_cpu(qp, qw, kp, kw):  # the latest Tq of Tk keys: right in the code's order of keys, on the CPU
    return torch.ones(qp.size(1), kp.size(1), dtype=torch.bool).tril(kp.size(1) - qp.size(1)).expand(qp.size(0),
                                                                                                       -1, -1)


def row_zero(qp, qw, kp, kw):  # batch-of-one code: row 0's windows for every row
    return (causal(qp, kp) & same_window(qw[:1], kw[:1])).expand(qp.size(0), -1, -1)


def cross_latest_of_call(qp, qw, kp, kw):  # "only the latest image": the call's latest, not the query's own window
    return (kw[:, None, :] == qw[:, -1:, None]).expand(-1, qp.size(1), -1)


def by_index_on_device(qp, qw, kp, kw):  # the latest Tq of Tk keys, on the inputs' device: ignores the positions
    return torch.ones(qp.size(1), kp.size(1), dtype=torch.bool, device=qp.device).tril(kp.size(1) - qp.size(1)
                                                                                      ).expand(qp.size(0), -1, -1)


def ones_on_cpu(qp, qw, kp, kw):  # causal, and-ed with a grid of ones built on the CPU
    return causal(qp, kp) & torch.ones(qp.size(0), qp.size(1), kp.size(1), dtype=torch.bool)


def in_place(kind, q_pos, q_win, k_pos, k_win):  # unsqueeze_ writes into the caller's tensors
    q_pos, q_win = q_pos.unsqueeze_(-1), q_win.unsqueeze_(-1)
    return masks(RIGHT_SELF, RIGHT_CROSS, RIGHT_CASA)(kind, q_pos[..., 0], q_win[..., 0], k_pos, k_win)


by_shape = {}


def remembered_by_shape(kind, q_pos, q_win, k_pos, k_win):  # stale state: one mask per kind and shapes
    key = (kind, q_pos.shape, k_pos.shape)
    if key not in by_shape:
        by_shape[key] = masks(RIGHT_SELF, RIGHT_CROSS, RIGHT_CASA)(kind, q_pos, q_win, k_pos, k_win)
    return by_shape[key]


seen = {}


def remembered(kind, q_pos, q_win, k_pos, k_win):  # stale state: computes each kind's mask once
    if kind not in seen:
        seen[kind] = masks(RIGHT_SELF, RIGHT_CROSS, RIGHT_CASA)(kind, q_pos, q_win, k_pos, k_win)
    return seen[kind]


def loops(kind, q_pos, q_win, k_pos, k_win):  # the rules cell by cell
    if kind not in ("self", "cross", "casa"):
        raise ValueError(f"unknown kind {kind}")
    rows = []
    for qp, qw, kp, kw in zip(q_pos.tolist(), q_win.tolist(), k_pos.tolist(), k_win.tolist()):
        rows.append([[{"self": kp[j] <= qp[i], "cross": kw[j] == qw[i], "casa": kp[j] <= qp[i] and kw[j] == qw[i]}[kind]
                      for j in range(len(kp))] for i in range(len(qp))])
    return torch.tensor(rows, dtype=torch.bool, device=q_pos.device)[:, None]


def with_where(kind, q_pos, q_win, k_pos, k_win):  # unsqueeze and torch.where instead of indexing with None
    q_pos, q_win, k_pos, k_win = q_pos.unsqueeze(2), q_win.unsqueeze(2), k_pos.unsqueeze(1), k_win.unsqueeze(1)
    if kind == "self":
        return k_pos.le(q_pos).unsqueeze(1)
    if kind == "cross":
        return k_win.eq(q_win).unsqueeze(1)
    if kind == "casa":
        return torch.where(k_win == q_win, k_pos <= q_pos, False).unsqueeze(1)
    raise ValueError(kind)


WRONG = {  # name: (a wrong answer, a fragment of the one line its grader must say)
    "self_by_index": (masks(by_index, RIGHT_CROSS, RIGHT_CASA), "a self query at position 0 saw a later key"),
    "self_on_cpu": (masks(by_index_on_cpu, RIGHT_CROSS, RIGHT_CASA), "its keys in reverse order"),
    "self_strict": (masks(lambda qp, qw, kp, kw: kp[:, None] < qp[:, :, None], RIGHT_CROSS, RIGHT_CASA),
                    "missed itself"),
    "casa_without_causal": (masks(RIGHT_SELF, RIGHT_CROSS, RIGHT_CROSS), "saw a later key"),
    "casa_as_self": (masks(RIGHT_SELF, RIGHT_CROSS, RIGHT_SELF), "text of an earlier window reached a casa query"),
    "cross_every_earlier_image": (masks(RIGHT_SELF, lambda qp, qw, kp, kw: kw[:, None] <= qw[:, :, None], RIGHT_CASA),
                                  "an image of an earlier window reached a cross query"),
    "cross_previous_window": (masks(RIGHT_SELF, lambda qp, qw, kp, kw: kw[:, None] == qw[:, :, None] - 1, RIGHT_CASA),
                              "an image of an earlier window reached a cross query"),
    "casa_row_zero": (masks(RIGHT_SELF, RIGHT_CROSS, row_zero), "row 1 of the block-wise regrouping"),
    "no_value_error": (lambda kind, *a: masks(RIGHT_SELF, RIGHT_CROSS, RIGHT_CASA)(
        kind if kind in ("self", "cross", "casa") else "self", *a), "must raise ValueError"),
    "no_head_axis": (lambda kind, *a: masks(RIGHT_SELF, RIGHT_CROSS, RIGHT_CASA)(kind, *a)[:, 0], "must be a"),
    "float_mask": (lambda kind, *a: masks(RIGHT_SELF, RIGHT_CROSS, RIGHT_CASA)(kind, *a).float(), "torch.bool"),
    "remembered": (remembered, "must be a"),
    "self_by_index_on_device": (masks(by_index_on_device, RIGHT_CROSS, RIGHT_CASA),
                                "its keys in reverse order: a self query at position 0 saw a later key"),
    "cross_latest_of_call": (masks(RIGHT_SELF, cross_latest_of_call, RIGHT_CASA),
                             "cached call 5 [5, 3, 8, <image>] (N=4, 2 layer(s), 2 head(s), base 10000): a cross "
                             "query at position 10 saw a later key"),
    "cross_not_earlier": (masks(RIGHT_SELF, lambda qp, qw, kp, kw: kw[:, None] >= qw[:, :, None], RIGHT_CASA),
                          "a cross query at position 0 saw a later key"),
    "self_ones_on_cpu": (masks(ones_on_cpu, RIGHT_CROSS, RIGHT_CASA), "may_attend('self', ...) on inputs of another"),
    "in_place": (in_place, "may_attend changed its argument q_pos in place"),
    "remembered_by_shape": (remembered_by_shape, "a self query at position 0 saw a later key (position 1)"),
}
RIGHT = {"loops": loops, "with_where": with_where,
         "cross_causal_too": masks(RIGHT_SELF, RIGHT_CASA, RIGHT_CASA)}  # an image sits at its marker: never later
