"""
Exercise 5: block-wise fusion attention for training, equal to the dense mask.

Read first: casa.py, `may_attend`, `Block.fuse` and `split_windows` (which calls your function).
Grade:      make grade EX=5

In training, a fusion query sees only its own window: its image (and, in CASA, that window's text). The dense way
builds one (T x all keys) mask per row, mostly False. The block-wise way cuts every row into its windows and makes
each window a row of its own, so the masks shrink to (window text) x (image + window text); the result must be
exactly the same. Your function computes the regrouping: the new row of every token and its place in that row.

Example, one row with windows [0, 0, 1, 1, 1, 2]:   W = 3,   group [0, 0, 1, 1, 1, 2],   slot [0, 1, 0, 1, 2, 0]
A second row gets groups W .. 2W - 1, counted from its own first window.
"""
import torch


def group_by_window(win):
    """win (B, T) long, non-decreasing along each row (padding repeats the last window).
    Returns (group, slot, W): group (B, T) long = row * W + (win - the row's first window); slot (B, T) long = the
    token's index inside its window (0 at the window's first token); W int = the most windows any row spans.
    Hint for slot: mark where a window opens, then for every token find the latest opening at or before it
    (torch.cummax) and take the distance.
    """
    raise NotImplementedError
