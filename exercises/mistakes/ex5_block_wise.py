"""Exercise 5 (group_by_window): wrong answers and right ones written differently from casa.py's."""
import torch


def grouping(win, W=None, first=None, slot=None, rows=True):
    """group_by_window with the mistakes below as options: how W, each row's first window and the slots are
    found, and whether each row gets its own groups."""
    B, T = win.shape
    first = win[:, :1] if first is None else first
    W = int((win - first).max()) + 1 if W is None else W
    group = (torch.arange(B, device=win.device)[:, None] * W if rows else 0) + (win - first)
    if slot is None:
        t = torch.arange(T, device=win.device).expand(B, T)
        opens = torch.cat([torch.ones_like(win[:, :1], dtype=torch.bool), win[:, 1:] != win[:, :-1]], 1)
        slot = t - torch.where(opens, t, 0).cummax(1).values
    return group, slot, W


def loops(win):  # row by row, token by token
    B, T = win.shape
    W = max(int(row[-1] - row[0]) + 1 for row in win)
    group, slot = torch.zeros_like(win), torch.zeros_like(win)
    for b in range(B):
        for t in range(T):
            group[b, t] = b * W + int(win[b, t] - win[b, 0])
            slot[b, t] = 0 if t == 0 or win[b, t] != win[b, t - 1] else slot[b, t - 1] + 1
    return group, slot, W


def counted(win):  # slots from the lengths of the runs of each window (unique_consecutive)
    first = win[:, :1]
    slots = []
    for row in win:
        _, lengths = torch.unique_consecutive(row, return_counts=True)
        slots.append(torch.cat([torch.arange(int(n), device=win.device) for n in lengths]))
    W = int((win[:, -1:] - first).max()) + 1
    return torch.arange(win.size(0), device=win.device)[:, None] * W + win - first, torch.stack(slots), W


def slots_of_the_flat_batch(win):  # the rows laid end to end: a row that starts in its last row's window goes on
    flat = win.flatten()
    t = torch.arange(flat.numel(), device=win.device)
    opens = torch.cat([torch.ones_like(flat[:1], dtype=torch.bool), flat[1:] != flat[:-1]])
    return grouping(win, slot=(t - torch.where(opens, t, 0).cummax(0).values).view(win.shape))


def cummax_indices(win):  # the running maximum's index for the window's start: a tie moves it to the latest token
    t = torch.arange(win.size(1), device=win.device).expand_as(win)
    opens = torch.cat([torch.ones_like(win[:, :1], dtype=torch.bool), win[:, 1:] != win[:, :-1]], 1)
    return grouping(win, slot=t - torch.where(opens, t, 0).cummax(1).indices)


def searchsorted(win):  # each token's slot: its index minus where its window starts in the row
    B, T = win.shape
    first = win[:, :1]
    W = int((win[:, -1:] - first).max()) + 1
    start = torch.searchsorted(win.contiguous(), win.contiguous())
    return W * torch.arange(B, device=win.device)[:, None] + win - first, torch.arange(T, device=win.device) - start, W


WRONG = {  # name: (a wrong answer, a fragment of the one line its grader must say)
    "w_from_row_zero": (lambda win: grouping(win, W=int(win[0, -1] - win[0, 0]) + 1), "row 1 of the batch"),
    "w_from_zero": (lambda win: grouping(win, W=int(win.max()) + 1), "W must be 3, got 4"),
    "w_distinct_windows": (lambda win: grouping(win, W=len(torch.unique(win))), "spans the most windows, 3"),
    "w_a_tensor": (lambda win: grouping(win, W=(win - win[:, :1]).max() + 1), "W must be a Python int"),
    "first_window_zero": (lambda win: grouping(win, first=torch.zeros_like(win[:, :1])), "must go to row 3"),
    "no_row_offset": (lambda win: grouping(win, rows=False), "row 1 of the batch"),
    "slot_never_restarts": (lambda win: grouping(win, slot=torch.arange(win.size(1)).expand_as(win)),
                            "slots count from 0"),
    "slot_from_one": (lambda win: grouping(win, slot=grouping(win)[1] + 1), "must sit at slot 0"),
    "slot_int32": (lambda win: grouping(win, slot=grouping(win)[1].int()), "torch.int32"),
    "w_from_the_batch_range": (lambda win: grouping(win, W=int(win.max() - win.min()) + 1), "W must be 3, got 4"),
    "first_window_of_row_zero": (lambda win: grouping(win, first=win[0, 0]), "its token 0 (window 1) must go to row 3"),
    "slots_of_the_flat_batch": (slots_of_the_flat_batch, "row 1 of the batch with windows [[0, 0, 0, 1, 1, 1], [1, 1, "
                                                         "2, 2, 3, 3]]: its token 0 must sit at slot 0"),
    "rows_on_cpu": (lambda win: (torch.arange(win.size(0))[:, None] * grouping(win)[2] + win - win[:, :1],
                                 *grouping(win)[1:]), "group_by_window(win) on inputs of another device"),
    "cummax_indices": (cummax_indices, "its token 1 must sit at slot 1 of its window"),
}
RIGHT = {"loops": loops, "counted": counted, "searchsorted": searchsorted}
