"""Exercise 2 (rope): wrong answers, and right ones in other layouts of the pairs (still RoPE)."""
import torch


def half_split(x, pos, base, exponent=lambda i, half: -i / half, dtype=torch.float32, rows=None, device=None):
    """RoPE on pairs (i, i + D/2), with the mistakes below as options: the exponent of base, the dtype of the
    angles, which row's positions every row uses, and the device of the frequencies."""
    half = x.size(-1) // 2
    i = torch.arange(half, device=device or x.device, dtype=dtype)
    pos = pos if rows is None else pos[rows].expand_as(pos)
    angles = pos[:, None, :, None].to(dtype) * base ** exponent(i, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def interleaved(x, pos, base):  # pairs (2i, 2i + 1), as in the RoPE paper and GPT-J
    half = x.size(-1) // 2
    angles = pos[:, None, :, None].float() * base ** (-torch.arange(half, device=x.device) / half)
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], -1)
    return out.flatten(-2).to(x.dtype)


def complex_numbers(x, pos, base):  # Llama's: each pair (2i, 2i + 1) a complex number, turned by multiplying
    half = x.size(-1) // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float64) / half)
    turn = torch.polar(torch.ones(1, device=x.device, dtype=torch.float64), pos[:, None, :, None].double() * freqs)
    z = torch.view_as_complex(x.double().unflatten(-1, (half, 2)).contiguous())
    return torch.view_as_real(z * turn).flatten(-2).to(x.dtype)


def pair_by_pair(x, pos, base):  # a loop over pairs, the slowest pair first, turning clockwise: still RoPE
    half, out = x.size(-1) // 2, torch.empty_like(x)
    for i in range(half):
        a = pos[:, None, :].float() * base ** (-(half - 1 - i) / half)
        out[..., i] = x[..., i] * a.cos() + x[..., i + half] * a.sin()
        out[..., i + half] = -x[..., i] * a.sin() + x[..., i + half] * a.cos()
    return out


def rotate_half(x, pos, base):  # cos and sin repeated over both halves, the angles in float64
    half = x.size(-1) // 2
    angles = pos.double()[:, None, :, None] * base ** (-torch.arange(half, device=x.device, dtype=torch.float64) / half)
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1).double()
    return (x.double() * angles.cos().repeat(1, 1, 1, 2) + rotated * angles.sin().repeat(1, 1, 1, 2)).to(x.dtype)


def turned(x, angles, swap=False):
    """x's pairs (i, i + D/2) turned by angles (B, 1, L, D/2); swap: sin and cos mixed up."""
    half = x.size(-1) // 2
    cos, sin = (angles.sin(), angles.cos()) if swap else (angles.cos(), angles.sin())
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def frequencies(x, base):
    half = x.size(-1) // 2
    return base ** (-torch.arange(half, device=x.device) / half)


def mixed_layouts(x, pos, base):  # rotate_half's halves, but each angle repeated for two neighbours (2i, 2i + 1)
    half = x.size(-1) // 2
    angles = pos[:, None, :, None].float() * base ** (-torch.arange(half, device=x.device) / half)
    angles = angles.repeat_interleave(2, -1)
    return x * angles.cos() + torch.cat([-x[..., half:], x[..., :half]], -1) * angles.sin()


per_size = {}


def frequencies_per_size(x, pos, base):  # stale state: the frequencies computed once per head size, whatever the base
    if x.size(-1) not in per_size:
        per_size[x.size(-1)] = frequencies(x, base)
    return turned(x, pos[:, None, :, None].float() * per_size[x.size(-1)].to(x.device))


def head_dim_eight(x, pos, base):  # hard-coded D = 8
    angles = pos[:, None, :, None].float() * base ** (-torch.arange(4, device=x.device) / 4)
    x1, x2 = x[..., :4], x[..., 4:]
    return torch.cat([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], -1)


def pos_per_head(x, pos, base):  # positions broadcast against heads instead of rows: right when B == H or 1
    half = x.size(-1) // 2
    angles = pos[..., None].float() * base ** (-torch.arange(half, device=x.device) / half)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], -1)


WRONG = {  # name: (a wrong answer, a fragment of the one line its grader must say)
    "angles_in_input_dtype": (lambda x, pos, base: half_split(x, pos, base, dtype=x.dtype), "in float32"),
    "hard_coded_base": (lambda x, pos, base: half_split(x, pos, 10000.0), "base 100 and base 10000"),
    "row_zero_positions": (lambda x, pos, base: half_split(x, pos, base, rows=slice(0, 1)), "(row 1, head 0"),
    "exponent_over_d": (lambda x, pos, base: half_split(x, pos, base, exponent=lambda i, half: -i / (2 * half)),
                        "not RoPE's (D=8"),
    "exponent_off_by_one": (lambda x, pos, base: half_split(x, pos, base, exponent=lambda i, half: -(i + 1) / half),
                            "not RoPE's"),
    "float32_out": (lambda x, pos, base: half_split(x.float(), pos, base), "bfloat16 x must be a"),
    "does_nothing": (lambda x, pos, base: x, "returned x unchanged"),
    "frequencies_on_cpu": (lambda x, pos, base: half_split(x, pos, base, device="cpu"),
                           "inputs of another device"),
    "head_dim_eight": (head_dim_eight, "(3, 1, 5, 16) float32 x, base 100: raised"),
    "pos_per_head": (pos_per_head, "(row 1, head 0"),
    "no_sign": (lambda x, pos, base: half_split(x, pos, base).abs(), "keeping each pair's length"),
    "sin_cos_swapped": (lambda x, pos, base: turned(x, pos[:, None, :, None].float() * frequencies(x, base), True),
                        "not RoPE's (D=8, base 10000): channels (0, 4) turn by 0.571"),
    "mixed_layouts": (mixed_layouts, "keeping each pair's length (D=8)"),
    "frequencies_per_size": (frequencies_per_size, "the same angles with base 100 and base 10000"),
    "positions_in_input_dtype": (lambda x, pos, base: half_split(x, pos.to(x.dtype), base),
                                 "bfloat16 x, D=8, base 10000) channel"),
    "frequencies_in_float16": (lambda x, pos, base: turned(x, pos[:, None, :, None].float()  # to save memory
                                                           * frequencies(x, base).half().float()),
                               "position 1000000 (row 1, head 0, float32 x"),
}
RIGHT = {"interleaved": interleaved, "complex_numbers": complex_numbers, "pair_by_pair": pair_by_pair,
         "rotate_half": rotate_half}
