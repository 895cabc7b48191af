"""
Exercise 3: insertion. Lay each image's tokens into the text stream.

Read first: casa.py, `VLM.insert_images` (which calls your function) and `VLM.forward`.
Grade:      make grade EX=3

In token insertion (LLaVA, nanoVLM) an image becomes N ordinary tokens of the stream: they are queries, keys, and
they go into the KV cache. casa.py lays them out so that each image marker is preceded by its image's N tokens;
the marker then reads as "end of image". The model needs, for every token of idx, its slot in that longer stream:
the image tokens fill the N slots before each marker, the text and the markers fill the rest.

Example, N = 2, idx = [a, <image>, b, c]:   stream = [a, img0, img1, <image>, b, c]   ->   slots [0, 3, 4, 5]
"""
import torch


def stream_slots(is_image, n):
    """is_image (B, T) bool, True at image markers; n tokens per image.
    Returns (B, T) long: the stream slot of each token of idx (the marker after its own image's n tokens).
    Hint: a token moves n slots later for every marker up to and including itself.
    """
    raise NotImplementedError
