"""Exercise 3 (stream_slots): wrong answers and right ones written differently from casa.py's."""
import torch


def shifted(is_image, n, per_marker=None, inclusive=True):
    """slot = index + (slots per marker) * (markers so far, this token's own included or not)."""
    markers = is_image.long().cumsum(1) - (0 if inclusive else is_image.long())
    return torch.arange(is_image.size(1), device=is_image.device) + (n if per_marker is None else per_marker) * markers


def loops(is_image, n):  # token by token, counting the markers
    slots = torch.zeros(is_image.shape, dtype=torch.long, device=is_image.device)
    for b in range(is_image.size(0)):
        at = 0
        for t in range(is_image.size(1)):
            at += n if is_image[b, t] else 0
            slots[b, t] = at
            at += 1
    return slots


def triangle(is_image, n):  # markers so far as a product with a triangle of ones
    T = is_image.size(1)
    upto = torch.ones(T, T, dtype=torch.long, device=is_image.device).triu()  # upto[s, t]: s <= t
    return torch.arange(T, device=is_image.device) + n * (is_image.long() @ upto)


done = [0]


def continued(is_image, n):  # stale state: slots go on from the last call's (the caller adds the stream's start)
    slots = done[0] + shifted(is_image, n)
    done[0] = int(slots.max()) + 1
    return slots


WRONG = {  # name: (a wrong answer, a fragment of the one line its grader must say)
    "hard_coded_n": (lambda is_image, n: shifted(is_image, 4), "(N=1, 1 layer(s), 1 head(s), base 500): the marker"),
    "marker_before_image": (lambda is_image, n: shifted(is_image, n, inclusive=False),
                            "must land right after its image's 4 tokens"),
    "row_zero": (lambda is_image, n: shifted(is_image[:1], n).expand(is_image.shape),
                 "row 1 of a 3-row batch of the insertion model"),
    "marker_costs_n_plus_one": (lambda is_image, n: shifted(is_image, n, per_marker=n + 1), "slot 4, got 5"),
    "one_count_for_the_batch": (lambda is_image, n: torch.arange(is_image.size(1)) + n * is_image.long().flatten()
                                .cumsum(0).view(is_image.shape), "row 1 of a 3-row batch"),
    "int32": (lambda is_image, n: shifted(is_image, n).int(), "torch.int32"),
    "arange_on_cpu": (lambda is_image, n: torch.arange(is_image.size(1)) + n * is_image.long().cumsum(1),
                      "inputs of another device"),
    "ignores_markers": (lambda is_image, n: shifted(is_image, 0), "4 tokens: slot 4, got 0"),
    "continued": (continued, "stream_slots answered differently when called again on the same arguments"),
    "counted_down_the_batch": (lambda is_image, n: torch.arange(is_image.size(1), device=is_image.device)
                               + n * is_image.long().cumsum(0), "row 0 of a 3-row batch of the insertion model"),
    "slots_from_one": (lambda is_image, n: shifted(is_image, n) + 1, "keep its own slot (0, 1, 2, ...)"),
}
RIGHT = {"loops": loops, "triangle": triangle}
