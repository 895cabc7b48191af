"""Exercise 6 (predicted_cache): wrong formulas, and right ones written differently."""


def formula(fusion, turns, tokens_per_turn, n_image_tokens, n_layer, n_embd, max_text=None, marker=1,
            image_in_stream=True, window_marker=1, trim=lambda text, max_text: min(text, max_text) if max_text
            else text, kv=2, layers=None, window_layers=None, number=4, tokens_of_every_layer=False):
    """The paper's cache sizes, with the mistakes below as options."""
    N, layers = n_image_tokens, layers or n_layer
    text = trim(turns * (marker + tokens_per_turn + (N if fusion == "insertion" and image_in_stream else 0)),
                max_text)
    window = {"insertion": 0, "cross": N, "casa": N + window_marker + tokens_per_turn}[fusion]
    return {"tokens": (n_layer if tokens_of_every_layer else 1) * (text + window),
            "bytes": (layers * text + (window_layers or layers) * window) * kv * n_embd * number}


def simulated(fusion, turns, tokens_per_turn, n_image_tokens, n_layer, n_embd, max_text=None):
    """Turn by turn, as the cache fills: the stream's keys (trimmed to max_text) and the latest window."""
    text = window = 0
    for _ in range(turns):
        text += 1 + tokens_per_turn + (n_image_tokens if fusion == "insertion" else 0)
        text = min(text, max_text or text)
        window = {"insertion": 0, "cross": n_image_tokens, "casa": n_image_tokens + 1 + tokens_per_turn}[fusion]
    per_layer = text + window
    return {"tokens": per_layer, "bytes": sum(2 * per_layer * n_embd * 4 for _ in range(n_layer))}


def trims_everything(fusion, turns, tokens_per_turn, n_image_tokens, n_layer, n_embd, max_text=None):
    """max_text applied to the window's keys too."""
    cache = formula(fusion, turns, tokens_per_turn, n_image_tokens, n_layer, n_embd)
    tokens = min(cache["tokens"], max_text or cache["tokens"])
    return {"tokens": tokens, "bytes": cache["bytes"] // cache["tokens"] * tokens}


def trimmed_before_the_turn(fusion, turns, tokens_per_turn, n_image_tokens, n_layer, n_embd, max_text=None):
    """max_text applied before each turn's keys come in: up to max_text + a turn's keys."""
    turn = 1 + tokens_per_turn + (n_image_tokens if fusion == "insertion" else 0)
    return formula(fusion, turns, tokens_per_turn, n_image_tokens, n_layer, n_embd, max_text,
                   trim=lambda text, max_text: min(text, max_text + turn) if max_text else text)


WRONG = {  # name: (a wrong answer, a fragment of the one line its grader must say)
    "insertion_forgets_images": (lambda *a, **k: formula(*a, **k, image_in_stream=False),
                                 "insertion after 1 turn of 3 tokens"),
    "always_max_text": (lambda *a, **k: formula(*a, **k, trim=lambda text, max_text: max_text or text),
                        "cross after 1 turn of 2 tokens (N=4, 2 layer(s), n_embd 32, max_text=7)"),
    "hard_coded_layers": (lambda *a, **k: formula(*a, **k, layers=2), "cached bytes"),
    "hard_coded_n": (lambda fusion, turns, tokens, N, *a: formula(fusion, turns, tokens, 4, *a), "N=1"),
    "forgets_the_marker": (lambda *a, **k: formula(*a, **k, marker=0), "after 1 turn of 3 tokens"),
    "casa_window_without_marker": (lambda *a, **k: formula(*a, **k, window_marker=0), "casa after 1 turn"),
    "max_text_trims_the_window": (trims_everything, "max_text=7"),
    "keys_only": (lambda *a, **k: formula(*a, **k, kv=1), "cached bytes"),
    "trimmed_before_the_turn": (trimmed_before_the_turn, "insertion after 2 turns of 2 tokens (N=4, 2 layer(s), "
                                                         "n_embd 32, max_text=7): you predict 14 cached tokens"),
    "window_bytes_of_one_layer": (lambda *a, **k: formula(*a, **k, window_layers=1), "cross after 1 turn of 3 tokens "
                                                                                    "(N=4, 2 layer(s)"),
    "tokens_of_every_layer": (lambda *a, **k: formula(*a, **k, tokens_of_every_layer=True),
                              "you predict 16 cached tokens, the cache holds 8"),
    "bfloat16_bytes": (lambda *a, **k: formula(*a, **k, number=2), "you predict 2048 cached bytes"),
    "float_bytes": (lambda *a, **k: {**formula(*a, **k), "bytes": formula(*a, **k)["bytes"] / 1}, "int"),
}
RIGHT = {"formula": formula, "simulated": simulated}
