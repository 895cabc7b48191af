"""
Exercise 6: the paper's cache-size formulas, predicted, then checked against a real KVCache.

Read first: the README's "The three mechanisms, in code" (the paper's cache formulas), casa.py `KVCache.stats`
and `KVCache.advance` (the rolling window max_text).
Grade:      make grade EX=6

The streaming protocol: each turn appends one image (its marker and its n_image_tokens tokens) and then
tokens_per_turn text tokens, through one persistent cache. Predict what the cache holds after `turns` turns:
    tokens  the cached tokens, counted as the paper does: the self-attention keys of one layer, plus the largest
            fusion-layer window of any layer (0 for insertion, which has no fusion layer)
    bytes   every cached key and value of every layer: 2 tensors x n_embd float32 numbers (4 bytes) per key
Every block has a fusion layer (cross_every=1). With max_text, self-attention keeps only the latest max_text keys
(the fusion window is not trimmed). The grader streams real models and compares, case by case.
"""


def predicted_cache(fusion, turns, tokens_per_turn, n_image_tokens, n_layer, n_embd, max_text=None):
    """fusion: "insertion" | "cross" | "casa". Returns {"tokens": int, "bytes": int} after `turns` turns."""
    raise NotImplementedError
