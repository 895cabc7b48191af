"""
casa.py: a tiny vision-language model with three ways of feeding images to a language model.

  insertion  (LLaVA / nanoVLM)         image tokens go into the text stream and into the KV cache
  cross      (Flamingo / Llama 3.2 V)  extra layers where text queries attend to the latest image
  casa       (Kyutai, 2512.19535)      extra layers where text queries attend to the latest image
                                       AND their own window's text (since that image), one softmax

Read top to bottom: the config; the primitives (RoPE, attention); the three fusions, which differ
only in which keys a query may see (`may_attend`) and what the cache keeps of them (`LayerCache`);
the blocks; the vision encoder; the VLM and generation; the KV cache's storage; last, a speed path
for training (block-wise fusion attention) and the option checks the scripts share.

Every sequence is a list of token ids in which `image_token_id` marks where each image occurs; the
images themselves come as one tensor (n_images, 3, H, W) in the order of their markers (row 0's
first, then row 1's, ...). A *window* is the span from one marker to the next; `win` numbers them
(0 = text before the first image, k = after the k-th image).
"""
import math
import operator
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

FUSIONS = ("insertion", "cross", "casa")
# Padding carries meaning through these values, chosen so that no query ever sees a padding key:
NO_IMAGE = -1        # window of the image slots a row with fewer images leaves empty
PADDING_WINDOW = -2  # window of the padding slots that block-wise training adds (see split_windows)
FAR_AWAY = 2 ** 30   # stream position of insertion's padding: after every token, so never seen


@dataclass
class VLMConfig:
    # vision encoder (a small ViT); the image becomes (image_size // patch_size) ** 2 tokens
    image_size: int = 64
    patch_size: int = 8
    vit_layers: int = 3
    vit_dim: int = 128
    vit_heads: int = 4
    vit_layer_scale: float = 0.01  # ViT residual branches start scaled by this (CaiT; 0 = off)
    vit_stem: str = "conv"  # conv: log2(patch_size) stride-2 3x3 convolutions (a hybrid ViT;
    #                         pretrains about twice as fast: README) | patch: a linear map a patch
    # language model (decoder-only, RoPE, tied output head)
    vocab_size: int = 96
    image_token_id: int = 2
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    rope_base: float = 10000.0
    # fusion: how images reach the language model
    fusion: str = "casa"         # insertion | cross | casa
    cross_every: int = 1         # a fusion layer in every cross_every-th block (the paper, 28+
    #                              blocks: 2; here, with 4 blocks, 2 learns to look far more slowly)
    gate: bool = False           # cross only: Flamingo's zero-initialised tanh gate on fusion
    share_weights: bool = False  # the fusion layer reuses its block's self-attention (D1)
    block_wise: bool = True      # training: fusion attention per window; False = one dense mask

    def __post_init__(self):
        check_fields(self, at_least=dict(image_size=1, patch_size=1, vit_layers=0, vit_dim=2,
                                         vit_heads=1, vocab_size=1, n_layer=1, n_head=1, n_embd=2,
                                         cross_every=1, vit_layer_scale=0.0),
                     above=dict(rope_base=0.0))
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.vit_stem not in ("conv", "patch"):
            raise ValueError(f"vit_stem must be conv or patch, got {self.vit_stem!r}")
        if self.vit_stem == "conv" and self.patch_size & (self.patch_size - 1):
            raise ValueError("vit_stem=conv halves the image log2(patch_size) times: "
                             f"patch_size {self.patch_size} must be a power of 2")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        for dim, heads in ((self.n_embd, self.n_head), (self.vit_dim, self.vit_heads)):
            if dim % heads or (dim // heads) % 2:
                raise ValueError(f"width {dim} must split into {heads} heads of even size "
                                 "(RoPE rotates pairs)")
        if self.gate and self.fusion != "cross":
            raise ValueError("gate=True is for fusion=cross: CASA gates itself through its softmax "
                             "(paper, Sec. 3)")
        if not 0 <= self.image_token_id < self.vocab_size:
            raise ValueError(f"image_token_id {self.image_token_id} is outside the vocabulary "
                             f"({self.vocab_size})")

    @property
    def n_image_tokens(self):  # tokens per image
        return (self.image_size // self.patch_size) ** 2

    def has_fusion_layer(self, block_index):
        return self.fusion != "insertion" and (block_index + 1) % self.cross_every == 0


# --------------------------------------------------------------------------------------------------
# Primitives

def rope(x, pos, base):
    """Rotate channel pairs of x (B, H, L, D) by angles proportional to the integer positions pos
    (B, L), computed on the fly: positions are unbounded (a stream never hits a block_size)."""
    half = x.size(-1) // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = pos[:, None, :, None].float() * inv_freq  # (B, 1, L, D/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attend(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v over the keys each query may see: q (B, H, Tq, D), k and v
    (B, H, Tk, D), mask (B, 1, Tq, Tk) bool, True = may attend. A query that may see no key (text
    before the first image, in cross-attention) gets zero, not an all-masked softmax's NaN."""
    if k.size(-2) == 0:
        return q.new_zeros(q.shape)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    sees_something = mask.any(dim=-1, keepdim=True)  # (B, 1, Tq, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~sees_something)
    return out * sees_something


# --------------------------------------------------------------------------------------------------
# The three fusions: which keys a query may see, and what the cache keeps of them

def may_attend(kind, q_pos, q_win, k_pos, k_win):
    """THE place where the mechanisms differ: which keys each query may see. Returns (B, 1, Tq, Tk)
    bool. q_pos, q_win (B, Tq) and k_pos, k_win (B, Tk) are stream positions and window numbers; an
    image's tokens sit at the position of their marker and in the window that marker opens."""
    causal = k_pos[:, None, :] <= q_pos[:, :, None]
    same_window = k_win[:, None, :] == q_win[:, :, None]
    if kind == "self":   # insertion, and every LM self-attention: all earlier tokens of the stream
        mask = causal
    elif kind == "cross":  # keys are image tokens: the latest image's only (before the first, none)
        mask = same_window
    elif kind == "casa":  # keys are image + text tokens: the latest image's and its window's text
        mask = same_window & causal
    else:
        raise ValueError(f"unknown attention kind {kind!r}")
    return mask[:, None]


@dataclass
class KV:
    """Keys and values (B, H, L, D) plus each key's stream position and window (B, L): what a query
    may look at, and what a cache holds between generation steps."""
    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor
    win: torch.Tensor

    def then(self, later):
        return KV(torch.cat([self.k, later.k], 2), torch.cat([self.v, later.v], 2),
                  torch.cat([self.pos, later.pos], 1), torch.cat([self.win, later.win], 1))

    def keep(self, sel):  # sel: a slice or (L,) bool over keys, the same for every row
        return KV(self.k[:, :, sel], self.v[:, :, sel], self.pos[:, sel], self.win[:, sel])

    def __len__(self):
        return self.pos.size(1)

    def nbytes(self):
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class LayerCache:
    """One LM block's part of a KVCache: `text` holds the self-attention keys of the stream (text;
    plus image tokens under insertion) and `window` the fusion layer's keys of the latest window
    (cross: that image's; casa: that image's and the window's text so far). The cache policy of the
    three fusions is these two methods."""

    def __init__(self):
        self.text, self.window = KVBuffer(), KVBuffer()
        self.window_number = None  # the window `window` holds (a Python int: no device sync to ask)

    def extend_text(self, kv):
        """Self-attention: every key of the stream is kept (until a rolling window drops it)."""
        return self.text.append(kv)

    def extend_window(self, kv, latest_window):
        """Fusion: return every key this call's queries may need, but keep for later calls only the
        latest window's, the only one a later query can see: cross swaps the image at each new
        image, casa resets image + text."""
        seen = self.window.append(kv)
        if latest_window != self.window_number:  # a new window opened: drop the earlier ones' keys
            self.window.replace(seen.keep(seen.win[0] == latest_window))
            self.window_number = latest_window
        return seen


# --------------------------------------------------------------------------------------------------
# Blocks

class Attention(nn.Module):
    """Multi-head attention: the one primitive behind the ViT, self-attention, cross-attention and
    CASA. Queries come from x; keys/values come from whatever `kv` was built from (the same tokens,
    image tokens, or a cache). `rotate` applies RoPE at the given positions (rope_base: the LM's;
    the ViT and plain cross-attention use no positions in attention)."""

    def __init__(self, dim, n_head, rope_base=None):
        super().__init__()
        self.n_head, self.rope_base = n_head, rope_base
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def heads(self, x):  # (B, L, C) -> (B, H, L, C/H)
        B, L, C = x.shape
        return x.view(B, L, self.n_head, C // self.n_head).transpose(1, 2)

    def kv(self, x, pos=None, win=None, rotate=False):
        k, v = self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        return KV(rope(k, pos, self.rope_base) if rotate else k, v, pos, win)

    def forward(self, x, kv, mask=None, pos=None, rotate=False):
        q = self.heads(self.q_proj(x))
        if rotate:
            q = rope(q, pos, self.rope_base)
        y = attend(q, kv.k, kv.v, mask)  # (B, H, T, C/H)
        return self.out_proj(y.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim, bias=False)
        self.down = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


def scaled(update, scale):
    return update if scale is None else update * scale


class EncoderBlock(nn.Module):
    """The ViT's pre-norm transformer block: every patch sees every patch, no positions in the
    attention (the encoder adds learned ones to its input). LayerScale: learned per-channel gains on
    both residual branches, started small, so that the random blocks of a new ViT do not drown the
    patch embedding while it learns (without them shapes hardly learn: README)."""

    def __init__(self, dim, n_head, layer_scale=None):
        super().__init__()
        self.norm1, self.attn = nn.RMSNorm(dim), Attention(dim, n_head)
        self.norm3, self.mlp = nn.RMSNorm(dim), MLP(dim)
        self.attn_scale = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None
        self.mlp_scale = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None

    def forward(self, x):
        h = self.norm1(x)
        x = x + scaled(self.attn(h, self.attn.kv(h)), self.attn_scale)
        return x + scaled(self.mlp(self.norm3(x)), self.mlp_scale)


@dataclass
class Stream:
    """What every LM block needs to know about the tokens of one forward call."""
    pos: torch.Tensor           # (B, T) stream position of each query token
    win: torch.Tensor           # (B, T) its window: how many images came before it (its marker too)
    image_tokens: torch.Tensor  # (B, M*N, C) this call's images as LM-width tokens (fusion keys)
    image_pos: torch.Tensor     # (B, M*N) the position of each image's marker
    image_win: torch.Tensor     # (B, M*N) the window each image opens; NO_IMAGE pads shorter rows


class Block(nn.Module):
    """The LM's pre-norm transformer block. With a fusion layer, that layer runs in parallel with
    the text self-attention, each with its own norm (paper's layout):
        h = x + SA(n1(x)) + FUSE(n2(x), images);   out = h + MLP(n3(h))"""

    def __init__(self, dim, n_head, rope_base, fusion=None, share_weights=False, gate=False,
                 block_wise=False, n_image_tokens=0):
        super().__init__()
        self.fusion, self.share_weights = fusion, share_weights
        self.block_wise, self.n_image_tokens = block_wise, n_image_tokens
        self.norm1, self.attn = nn.RMSNorm(dim), Attention(dim, n_head, rope_base)
        if fusion:
            self.norm2 = nn.RMSNorm(dim)
            if not share_weights:
                self.cross = Attention(dim, n_head, rope_base)
            self.gate = nn.Parameter(torch.zeros(1)) if gate else None
        self.norm3, self.mlp = nn.RMSNorm(dim), MLP(dim)

    def start_fusion_from_self_attention(self):
        """The paper's initialisation: a new fusion layer starts as its block's self-attention."""
        with torch.no_grad():
            self.norm2.weight.copy_(self.norm1.weight)
            if not self.share_weights:
                self.cross.load_state_dict(self.attn.state_dict())

    def forward(self, x, s, cache=None):
        h = self.norm1(x)
        kv = self.attn.kv(h, s.pos, s.win, rotate=True)
        if cache is not None:
            kv = cache.extend_text(kv)  # (B, H, all keys so far, D)
        mask = may_attend("self", s.pos, s.win, kv.pos, kv.win)
        update = self.attn(h, kv, mask, s.pos, rotate=True)
        if self.fusion and cache is None and self.block_wise:
            update = update + fuse_per_window(self, self.norm2(x), s)  # training: the speed path
        elif self.fusion:
            update = update + self.fuse(self.norm2(x), s, cache)
        x = x + update
        return x + self.mlp(self.norm3(x))

    def fuse(self, h, s, cache):
        """Cross-attention or CASA. Image tokens are keys only: never queries, never updated, never
        cached with the text. They go through the same norm as the text (h = norm2(x)), as they
        would in the stream, so both kinds of keys start on one scale. CASA places image keys at
        their marker's position, so with RoPE a query sees how far back its image is; plain
        cross-attention uses no positions at all."""
        layer = self.attn if self.share_weights else self.cross
        casa = self.fusion == "casa"
        kv = layer.kv(self.norm2(s.image_tokens), s.image_pos, s.image_win, rotate=casa)
        if casa:
            kv = kv.then(layer.kv(h, s.pos, s.win, rotate=True))
        if cache is not None:
            kv = cache.extend_window(kv, int(s.win[0, -1]))
        mask = may_attend(self.fusion, s.pos, s.win, kv.pos, kv.win)
        out = layer(h, kv, mask, s.pos, rotate=casa)
        return out * torch.tanh(self.gate) if self.gate is not None else out


# --------------------------------------------------------------------------------------------------
# Vision encoder

def patch_stem(dim, p):
    """One linear map per non-overlapping p x p patch (the original ViT)."""
    return nn.Conv2d(3, dim, kernel_size=p, stride=p)


def conv_stem(dim, p):
    """log2(p) stride-2 3x3 convolutions, widths doubling up to dim (3 -> 32 -> 64 -> 128 for p =
    8): the same token grid as patch_stem, but each token is built from overlapping, local features
    (Xiao et al., "Early convolutions help transformers see better")."""
    n = p.bit_length() - 1
    widths = [3] + [max(1, dim >> (n - 1 - i)) for i in range(n)]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Conv2d(a, b, kernel_size=3, stride=2, padding=1), nn.GELU()]
    return nn.Sequential(*layers[:-1]) if layers else nn.Conv2d(3, dim, kernel_size=1)


class VisionEncoder(nn.Module):
    """A small ViT: a stem (convolutions, or one linear map per patch) + learned positions ->
    bidirectional blocks -> norm, then a projector to the LM width.
    (n, 3, H, W) floats in [0, 1] -> (n, N, n_embd) image tokens."""

    def __init__(self, config):
        super().__init__()
        d, p = config.vit_dim, config.patch_size
        self.patch_embed = patch_stem(d, p) if config.vit_stem == "patch" else conv_stem(d, p)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.n_image_tokens, d))
        self.blocks = nn.ModuleList(EncoderBlock(d, config.vit_heads, config.vit_layer_scale)
                                    for _ in range(config.vit_layers))
        self.norm = nn.RMSNorm(d)
        self.projector = nn.Sequential(nn.Linear(d, config.n_embd), nn.GELU(),
                                       nn.Linear(config.n_embd, config.n_embd))

    def forward(self, images):
        x = self.patch_embed(images * 2 - 1).flatten(2).transpose(1, 2)  # (n, N, vit_dim)
        x = x + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.projector(self.norm(x))  # (n, N, n_embd)


# --------------------------------------------------------------------------------------------------
# The vision-language model

def stream_slots(is_image, n):
    """Insertion's layout (exercise 3): where each token goes in the stream once every image marker
    is preceded by its image's n tokens. is_image (B, T) bool -> (B, T) long: a token moves n slots
    later per marker up to itself, so a marker lands right after its own image's tokens."""
    return (is_image.long() * n).cumsum(1) + torch.arange(is_image.size(1), device=is_image.device)


class VLM(nn.Module):
    """The whole model: a ViT turns each image into n_image_tokens tokens of the LM's width; a
    decoder-only LM reads the token ids, and the images reach it by the configured fusion: laid into
    the stream (insertion) or offered as keys to fusion layers (cross, casa). forward() trains and
    prefills; generate() decodes, with a KVCache."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(
            Block(config.n_embd, config.n_head, config.rope_base,
                  config.fusion if config.has_fusion_layer(i) else None, config.share_weights,
                  config.gate, config.block_wise, config.n_image_tokens)
            for i in range(config.n_layer))
        self.norm = nn.RMSNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("out_proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        nn.init.normal_(self.vision.pos_emb, std=0.02)
        for block in self.fusion_blocks():
            block.start_fusion_from_self_attention()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def fusion_blocks(self):
        return [block for block in self.blocks if block.fusion]

    def load_pretrained(self, state_dict):
        """Start from another casa model (e.g. adapt a trained insertion VLM into a CASA one): copy
        every tensor the two share by name; fusion layers the source lacks start as copies of their
        block's self-attention. Returns the names of the parameters that did not come from the
        source (train.py gives them their own LR)."""
        own = self.state_dict()
        shared = {name: t for name, t in state_dict.items() if name in own}
        mismatched = [name for name, t in shared.items() if t.shape != own[name].shape]
        if mismatched:
            name = mismatched[0]
            raise ValueError(f"the checkpoint's {name} has shape {tuple(shared[name].shape)}, "
                             f"this model's {tuple(own[mismatched[0]].shape)}: model sizes differ")
        self.load_state_dict(shared, strict=False)
        for i, block in enumerate(self.blocks):
            if block.fusion and f"blocks.{i}.norm2.weight" not in shared:
                block.start_fusion_from_self_attention()
        return [name for name, _ in self.named_parameters() if name not in shared]

    # -------------------------------------------------------------------------------------- forward

    def forward(self, idx, images=None, targets=None, cache=None):
        """idx (B, T) token ids with image markers; images (n, 3, H, W) for the n markers, in order;
        targets (B, T) next-token ids with -100 where no loss. With a cache, idx holds only the
        tokens since the last call and every row must have its markers at the same places. Returns
        logits (B, T, vocab) and the loss."""
        c = self.config
        B, T = idx.shape
        is_image = idx == c.image_token_id
        n_markers, n_images = int(is_image.sum()), 0 if images is None else images.size(0)
        if n_markers != n_images:
            raise ValueError(f"the tokens hold {n_markers} image markers but {n_images} images were given")
        if cache is not None and B > 1 and not bool((is_image == is_image[:1]).all()):
            raise ValueError("cached decoding of a batch needs the image markers at the same "
                             "places in every row")
        start, first_win = (cache.pos, cache.window) if cache is not None else (0, 0)
        win = first_win + is_image.long().cumsum(1)  # (B, T)
        image_tokens = self.vision(images) if n_images else None  # (n, N, C)
        x = self.tok_emb(idx)  # (B, T, C)
        if c.fusion == "insertion":
            x, s, text_at = self.insert_images(x, image_tokens, is_image, start)
        else:
            s = Stream(start + torch.arange(T, device=idx.device).expand(B, T), win,
                       *self.images_as_keys(image_tokens, is_image, start, win))
        for i, block in enumerate(self.blocks):
            x = block(x, s, cache.layers[i] if cache is not None else None)
        if c.fusion == "insertion":
            x = x.gather(1, text_at[..., None].expand(B, T, x.size(-1)))  # text tokens (B, T, C)
        if cache is not None:
            cache.advance(int(s.pos[0, -1]) + 1, int(win[0, -1]))
        logits = self.lm_head(self.norm(x))
        loss = None if targets is None else F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def insert_images(self, x, image_tokens, is_image, start):
        """Insertion: each marker becomes the image's N tokens, then the marker ("end of image"):
        stream tokens, queries, keys, cached, at their marker's position as in cross and CASA: they
        see one another, and a query finds a patch by what it shows, at one RoPE distance (a slot each
        bound a named shape's colour far later, if at all: accuracy notebook). Padding: FAR_AWAY."""
        B, T, C = x.shape
        N = self.config.n_image_tokens
        text_at = stream_slots(is_image, N)  # (B, T) slot of each text token in the stream
        length = text_at[:, -1] + 1  # (B,)
        L = int(length.max())
        stream = x.new_zeros(B, L, C)
        stream[torch.arange(B, device=x.device)[:, None], text_at] = x
        slot = torch.arange(L, device=x.device).expand(B, L)
        pos = torch.where(slot < length[:, None], start + slot, FAR_AWAY)
        if image_tokens is not None:
            b, t = is_image.nonzero(as_tuple=True)  # row-major: the order of the images
            slots = text_at[b, t][:, None] - N + torch.arange(N, device=x.device)  # (n, N)
            stream[b[:, None], slots] = image_tokens.to(stream.dtype)
            pos[b[:, None], slots] = start + text_at[b, t][:, None]  # at its marker's position
        no_images = self.images_as_keys(None, is_image, start, None)
        return stream, Stream(pos, torch.zeros_like(pos), *no_images), text_at

    def images_as_keys(self, image_tokens, is_image, start, win):
        """Cross/CASA: lay each row's images out as keys (B, M*N, C), each at its marker's position
        and in the window it opens. Rows with fewer images are padded with window NO_IMAGE, which no
        query belongs to."""
        B, T = is_image.shape
        N, C = self.config.n_image_tokens, self.config.n_embd
        M = int(is_image.sum(1).max()) if image_tokens is not None else 0
        tokens = self.tok_emb.weight.new_zeros(B, M, N, C)
        pos = torch.zeros(B, M, dtype=torch.long, device=is_image.device)
        image_win = torch.full_like(pos, NO_IMAGE)
        if M:
            b, t = is_image.nonzero(as_tuple=True)
            j = is_image.long().cumsum(1)[b, t] - 1  # index of each image within its row
            tokens[b, j] = image_tokens.to(tokens.dtype)
            pos[b, j], image_win[b, j] = start + t, win[b, t]
        return tokens.flatten(1, 2), pos.repeat_interleave(N, 1), image_win.repeat_interleave(N, 1)

    # ----------------------------------------------------------------------------------- generation

    def new_cache(self, max_text=None):
        return KVCache(self.config.n_layer, max_text)

    def next_token_logits(self, tokens, images=None, cache=None):
        """Logits (B, vocab) for the token after `tokens`, the image marker ruled out."""
        return self.text_only(self(tokens, images, cache=cache)[0][:, -1])

    def text_only(self, logits):
        """Rule out the image marker: the model writes text, images only ever come from outside."""
        logits[..., self.config.image_token_id] = float("-inf")
        return logits

    @torch.no_grad()
    def generate(self, idx, images=None, max_new_tokens=32, temperature=0.0, top_k=None,
                 stop_token=None, cache=None, generator=None):
        """Continue idx (B, T), which may hold image markers for `images`; temperature 0 = greedy.
        Decoding runs through a KVCache: a new one, or `cache` (from new_cache()) to go on with a
        stream, in which case idx holds only the tokens since the last call, so a streaming step
        (append a frame, then generate) is one call: idx = [marker], images = the frame. Every
        emitted token, the stop token included, is written into the cache. Returns the new tokens
        (B, <= max_new_tokens); rows that stopped early are padded with stop_token.
        (tests/test_casa.py checks it against recomputing the whole sequence at every step.)"""
        cache = self.new_cache() if cache is None else cache
        logits = self.next_token_logits(idx, images, cache)
        out, done = [], torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            token = pick(logits, temperature, top_k, generator)  # (B, 1)
            if stop_token is not None:
                token = torch.where(done, stop_token, token)
                done = done | (token == stop_token)
            out.append(token)
            # into the cache, the stop token too: it marks a frame's end
            logits = self.next_token_logits(token, cache=cache)
            if done.all():
                break
        return torch.cat(out, 1) if out else idx[:, :0]


def pick(logits, temperature=0.0, top_k=None, generator=None):
    """Next token from logits (B, vocab): greedy at temperature 0, else sampled from the top_k."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, -1), 1, generator=generator)


# --------------------------------------------------------------------------------------------------
# The KV cache: a LayerCache per block, each holding its keys in growing buffers

class KVCache:
    """What generation keeps between calls: a LayerCache per LM block, and where the stream stands
    (`pos`: the next token's position; `window`: how many images it has seen). With max_text, only
    the latest max_text self-attention keys stay (a rolling window): bounded memory forever."""

    def __init__(self, n_layer, max_text=None):
        self.layers = [LayerCache() for _ in range(n_layer)]
        self.pos, self.window, self.max_text = 0, 0, max_text

    def advance(self, pos, window):
        """After a forward call: the stream now stands at pos, in window. Positions keep counting up
        after a trim; RoPE only ever sees their differences."""
        self.pos, self.window = pos, window
        if self.max_text:
            for layer in self.layers:
                layer.text.drop_oldest(self.max_text)

    def stats(self):
        """Tokens cached (counted as the paper does: one layer's) and bytes (all layers)."""
        self_tokens = len(self.layers[0].text) if self.layers else 0
        fusion_tokens = max((len(layer.window) for layer in self.layers), default=0)
        nbytes = sum(layer.text.nbytes() + layer.window.nbytes() for layer in self.layers)
        return {"self_tokens": self_tokens, "fusion_tokens": fusion_tokens,
                "tokens": self_tokens + fusion_tokens, "bytes": nbytes}


class KVBuffer:
    """A growing list of keys, in tensors preallocated along the key axis and grown by doubling (as
    gpt-fast and nanochat do): appending a decoded token copies nothing already cached. The live
    keys are slots [start, end), so dropping the oldest only moves `start`."""

    def __init__(self):
        self.store, self.start, self.end = None, 0, 0

    def __len__(self):
        return self.end - self.start

    def view(self):
        return self.store.keep(slice(self.start, self.end))

    def append(self, kv):
        """Add kv's keys; return every live key (a view, valid until the buffer next changes)."""
        n = len(kv)
        if self.store is None or self.end + n > self.store.pos.size(1):
            B, H, _, D = kv.k.shape
            capacity = max(16, 2 * (len(self) + n))
            grown = KV(kv.k.new_empty(B, H, capacity, D), kv.v.new_empty(B, H, capacity, D),
                       kv.pos.new_empty(B, capacity), kv.win.new_empty(B, capacity))
            if self.store is not None:  # the only copy of cached keys: once per doubling
                self.write(grown, 0, self.view())
            self.store, self.start, self.end = grown, 0, len(self)
        self.write(self.store, self.end, kv)
        self.end += n
        return self.view()

    @staticmethod
    def write(store, at, kv):
        n = len(kv)
        store.k[:, :, at:at + n], store.v[:, :, at:at + n] = kv.k, kv.v
        store.pos[:, at:at + n], store.win[:, at:at + n] = kv.pos, kv.win

    def drop_oldest(self, keep):
        self.start = max(self.start, self.end - keep)

    def replace(self, kv):
        """Hold exactly kv from now on, in new storage (views handed out earlier stay as were)."""
        self.store, self.start, self.end = kv, 0, len(kv)

    def nbytes(self):
        return 0 if self.store is None else self.view().nbytes()


# --------------------------------------------------------------------------------------------------
# Faster training: block-wise fusion attention (equal to the dense mask above: tested)

def fuse_per_window(block, h, s):
    """Block.fuse for training, computed per window: the same result (tested), far less memory."""
    h_w, s_w, (group, slot) = split_windows(h, s, block.n_image_tokens)
    return block.fuse(h_w, s_w, None)[group, slot]


def split_windows(h, s, n):
    """Block-wise (varlen) fusion attention for training: regroup a batch so that every window
    becomes a row of its own, holding its text and its image (n tokens). A row's mask is then
    (window text) x (n + window text) instead of (T) x (all images + T): memory grows with the
    number of windows, not with its square. Returns the regrouped h (G, L, C) and Stream, and
    (group, slot), each (B, T), to gather results back."""
    B, T, C = h.shape
    group, slot, W = group_by_window(s.win)
    used, group = torch.unique(group, return_inverse=True)  # a row only for windows holding a token
    G, L = used.numel(), int(slot.max()) + 1
    h_w, pos_w = h.new_zeros(G, L, C), s.pos.new_zeros(G, L)
    win_w = torch.full_like(pos_w, PADDING_WINDOW)  # a window no real query or key belongs to
    h_w[group, slot], pos_w[group, slot], win_w[group, slot] = h, s.pos, s.win
    images, image_pos = h.new_zeros(G, n, C), s.pos.new_zeros(G, n)
    image_win = torch.full_like(image_pos, NO_IMAGE)
    M = s.image_tokens.size(1) // n
    real = s.image_win[:, ::n] >= 0  # (B, M) images that are not padding
    b, j = real.nonzero(as_tuple=True)
    g = torch.searchsorted(used, b * W + s.image_win[b, j * n] - s.win[b, 0])  # the window each image opens
    images[g] = s.image_tokens.view(B, M, n, C)[b, j]
    image_pos[g], image_win[g] = s.image_pos[b, j * n, None], s.image_win[b, j * n, None]
    return h_w, Stream(pos_w, win_w, images, image_pos, image_win), (group, slot)


def group_by_window(win):
    """Where each token goes when every window becomes a row of its own (exercise 5). win (B, T),
    non-decreasing along each row -> group (B, T) = row * W + (window - the row's first window),
    slot (B, T) = the token's index inside its window, and W, windows per row."""
    B, T = win.shape
    first = win[:, :1]
    W = int((win - first).max()) + 1
    group = torch.arange(B, device=win.device)[:, None] * W + (win - first)
    t = torch.arange(T, device=win.device).expand(B, T)
    opens = torch.ones_like(win, dtype=torch.bool)
    opens[:, 1:] = win[:, 1:] != win[:, :-1]
    slot = t - torch.where(opens, t, 0).cummax(1).values  # distance to the latest window opening
    return group, slot, W


# --------------------------------------------------------------------------------------------------
# Option checks (VLMConfig's, and the scripts' configs)

def check_fields(cfg, at_least=(), above=()):
    """Refuse nonsense in a config before anything is built or trained (a ValueError naming the
    field): every field must have its default's kind (an int may stand for a float; None where the
    default is None), floats finite, fields set >= at_least[name] and > above[name]."""
    for f in fields(cfg):
        value, kind = getattr(cfg, f.name), type(f.default)
        if kind is float and type(value) is int:
            value = float(value)
            setattr(cfg, f.name, value)
        if isinstance(value, float) and not math.isfinite(value):  # optional fields too
            raise ValueError(f"{f.name} must be a finite number, got {value}")
        if f.default is None or kind not in (int, float, str, bool):
            continue  # optional and list fields: their scripts check the rest
        if type(value) is not kind:
            raise ValueError(f"{f.name} must be {kind.__name__}, got {value!r}")
    for bounds, word, fine in ((at_least, ">=", operator.ge), (above, ">", operator.gt)):
        for name, low in dict(bounds).items():
            if getattr(cfg, name) is not None and not fine(getattr(cfg, name), low):
                raise ValueError(f"{name} must be {word} {low}, got {getattr(cfg, name)}")
