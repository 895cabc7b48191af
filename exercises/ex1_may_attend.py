"""
Exercise 1: the three masks. Which keys may each query see?

Read first: casa.py's module docstring (streams, markers, windows) and its section "Primitives"; then look at
results/attention_masks.png (python exercises/attention_masks.py draws it from the code).
Grade:      make grade EX=1        (or: python exercises/grade.py 1)

Every query and every key carries a stream position and a window number. A window is the span from one image marker
to the next (window 0 is the text before the first image); an image's tokens sit at the position of their marker,
in the window that marker opens. The three fusions differ in which keys a query may see:

  "self"   self-attention (insertion, and every LM block): every key of the stream at or before the query
  "cross"  cross-attention: the keys are image tokens; only the latest image's (the query's own window)
  "casa"   CASA: the keys are image tokens and text; the latest image's and the text of the query's own window,
           at or before the query

Fill in may_attend. The grader checks your masks key by key, then swaps your function into casa.py and checks
that all three models still compute exactly what they computed before.
"""
import torch


def may_attend(kind, q_pos, q_win, k_pos, k_win):
    """Which keys each query may see.

    kind: "self", "cross" or "casa"; anything else raises ValueError.
    q_pos, q_win: (B, Tq) long, the queries' stream positions and windows.
    k_pos, k_win: (B, Tk) long, the keys' stream positions and windows.
    Returns (B, 1, Tq, Tk) bool (the 1 broadcasts over attention heads), True where query i may see key j.
    Hint: compare (B, Tq, 1) against (B, 1, Tk) and let broadcasting build the (B, Tq, Tk) grid.
    """
    raise NotImplementedError
