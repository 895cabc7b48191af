"""
Exercise 4: the cache policy of cross-attention and CASA. What may be kept between generation steps?

Read first: casa.py, `KV`, `KVBuffer` and `LayerCache`; `Block.fuse_dense` (which calls your method).
Grade:      make grade EX=4

During generation each LM block keeps two lists of keys: `text` (its self-attention's: the whole stream) and
`window` (its fusion layer's). A fusion query only ever sees the keys of its own window, and windows only move
forward, so the window list may forget every earlier window as soon as a new one opens: cross keeps only the
latest image, CASA the latest image and that window's text so far. That is why their caches stay small.

Your method receives the keys of this call (kv: image tokens and, for CASA, the call's text) and the number of
the latest window in this call. It must return every key this call's queries may need: all the keys it holds from
earlier calls, then kv. A call may start in the window of the earlier calls and open a new one (streaming sends
the last token of a window, then the next frame's marker), so its first queries still need the earlier window's
keys; the masks then pick per query. For later calls it must keep only the latest window's keys.
    self.window          a KVBuffer: .append(kv) adds keys and returns all live ones (a KV);
                         .replace(kv) makes it hold exactly kv
    self.window_number   the window the buffer holds (None before the first call)
    KV.keep(sel)         the keys where sel (L,) bool is True; kv.win (B, L) holds each key's window
"""


def extend_window(self, kv, latest_window):
    """self: a casa.LayerCache; kv: a casa.KV of this call's fusion keys; latest_window: an int.
    Returns a casa.KV: the keys this call's queries may see (the masks then pick per query)."""
    raise NotImplementedError
