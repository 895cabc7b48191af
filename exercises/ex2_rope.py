"""
Exercise 2: RoPE, rotary position embedding. Rotate channel pairs by position.

Read first: casa.py, `rope` and `Attention.forward` (queries and keys are rotated, values are not).
Grade:      make grade EX=2

A query at position m and a key at position n should score q . k by their content and by m - n only, never by m
or n alone: that is what lets a stream run forever (positions just keep counting). RoPE gets it by rotating each
pair of channels (i, i + D/2) by the angle pos * base ** (-i / (D/2)), i = 0 .. D/2 - 1: slow turns for late
pairs (coarse position), fast ones for early pairs (fine position). A rotation keeps lengths, and the product of
two rotated vectors depends only on the difference of their angles. Any other pairing of the channels, e.g.
(2i, 2i + 1) as in the RoPE paper, is RoPE too, and the grader accepts it.
"""
import torch


def rope(x, pos, base):
    """x (B, H, L, D) float, D even; pos (B, L) long; base float (e.g. 10000.0).
    Returns (B, H, L, D), x's channel pairs (i, i + D/2) rotated by the angles pos * base ** (-i / (D/2)):
        out[i]         = x[i] cos(a) - x[i + D/2] sin(a)
        out[i + D/2]   = x[i] sin(a) + x[i + D/2] cos(a)
    Compute the angles in float32 and return x's dtype.
    """
    raise NotImplementedError
