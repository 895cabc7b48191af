"""Exact behaviour of the model: caches equal recomputation (also frame after frame of a stream), the masks are what
the paper says (checked by perturbing inputs and watching outputs), cache sizes follow the paper's formulas,
initialisation and parameter sharing, and the config's checks."""
import random
import re
from pathlib import Path

import pytest
import torch

import casa
from common import param_counts
import data
import scenes

MARK = 2  # image marker id in these tiny configs
VOCAB = 24


def tiny(fusion, **overrides):
    kw = dict(fusion=fusion, image_size=16, patch_size=4, vit_layers=1, vit_dim=32, vit_heads=2,
              vocab_size=VOCAB, image_token_id=MARK, n_layer=4, n_head=2, n_embd=32)
    kw.update(overrides)
    torch.manual_seed(0)
    return casa.VLM(casa.VLMConfig(**kw)).eval()


def sequence(n_images, length=28, seed=0):
    """One row of text ids (never the marker) with n_images markers spread over it, and its images."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(MARK + 1, VOCAB, (1, length), generator=g)
    for j in range(n_images):
        idx[0, 3 + j * (length - 4) // max(n_images, 1)] = MARK
    images = torch.rand(n_images, 3, 16, 16, generator=g) if n_images else None
    return idx, images


def images_in(chunk, images, used):
    k = int((chunk == MARK).sum())
    return (images[used:used + k] if k else None), used + k


def incremental_logits(model, idx, images, seed=0):
    """Feed idx through one cache in random chunks of 1-4 tokens, as generation and streaming do."""
    rng, cache, out, used, t = random.Random(seed), model.new_cache(), [], 0, 0
    while t < idx.size(1):
        chunk = idx[:, t:t + rng.randint(1, 4)]
        chunk_images, used = images_in(chunk, images, used)
        out.append(model(chunk, chunk_images, cache=cache)[0])
        t += chunk.size(1)
    return torch.cat(out, 1), cache


# ---------------------------------------------------------------------------------------------- cache equivalence

@pytest.mark.parametrize("fusion", casa.FUSIONS)
@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_cached_logits_equal_full_forward(fusion, n_images):
    model = tiny(fusion)
    idx, images = sequence(n_images)
    full = model(idx, images)[0]
    for seed in range(3):
        inc, _ = incremental_logits(model, idx, images, seed)
        torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", casa.FUSIONS)
def test_cached_batch_with_different_image_counts_per_row(fusion):
    model = tiny(fusion)
    (a, ia), (b, ib) = sequence(1, seed=1), sequence(3, seed=2)
    idx, images = torch.cat([a, b]), torch.cat([ia, ib])
    full = model(idx, images)[0]
    torch.testing.assert_close(full[:1], model(a, ia)[0], atol=1e-5, rtol=1e-5)  # padding changes nothing
    torch.testing.assert_close(full[1:], model(b, ib)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="same places"):
        model(idx, images, cache=model.new_cache())


@torch.no_grad()
def generate_recomputing(model, idx, images, max_new_tokens, stop_token=None):
    """The reference the cache must match: greedy decoding that recomputes the whole sequence at every step."""
    out = []
    for _ in range(max_new_tokens):
        token = model.next_token_logits(idx, images).argmax(-1, keepdim=True)
        out.append(token)
        idx = torch.cat([idx, token], 1)
        if stop_token is not None and token.item() == stop_token:
            break
    return torch.cat(out, 1)


@pytest.mark.parametrize("fusion", casa.FUSIONS)
@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_greedy_with_cache_equals_without(fusion, n_images):
    model = tiny(fusion)
    idx, images = sequence(n_images, length=12)
    cached = model.generate(idx, images, max_new_tokens=10)
    fresh = generate_recomputing(model, idx, images, max_new_tokens=10)
    assert cached.shape == (1, 10)
    assert torch.equal(cached, fresh)


@pytest.mark.parametrize("fusion", casa.FUSIONS)
def test_image_arriving_mid_generation(fusion):
    """Streaming: prompt with an image, generate, append a new frame, generate again, all through one cache."""
    model = tiny(fusion)
    idx, images = sequence(1, length=8)
    frame = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    cache = model.new_cache()
    first = model.generate(idx, images, max_new_tokens=6, cache=cache)
    marker = torch.full((1, 1), MARK)
    second = model.generate(marker, frame, max_new_tokens=6, cache=cache)
    # reference: recompute from scratch on the whole stream
    seq, all_images = torch.cat([idx, first, marker], 1), torch.cat([images, frame])
    assert torch.equal(second, generate_recomputing(model, seq, all_images, max_new_tokens=6))
    # and the cached logits of every step equal one full forward pass
    stream = torch.cat([seq, second], 1)
    inc, cache = incremental_logits(model, stream, all_images)
    torch.testing.assert_close(inc, model(stream, all_images)[0], atol=1e-5, rtol=1e-5)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = tiny("casa")
    idx, images = sequence(1, length=10)
    def sample(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return model.generate(idx, images, max_new_tokens=8, temperature=1.0, generator=g, **kw)
    assert torch.equal(sample(3), sample(3))
    assert torch.equal(sample(3, top_k=1), model.generate(idx, images, max_new_tokens=8))


@pytest.mark.parametrize("fusion", casa.FUSIONS)
def test_streaming_many_frames_cache_equals_recomputation(fusion):
    """Frame after frame through one cache (marker + frame, then greedy tokens until the stop token), against
    recomputing the whole stream from scratch at every frame."""
    torch.manual_seed(0)
    model = casa.VLM(casa.VLMConfig(fusion=fusion, image_size=32, patch_size=8, vit_layers=1, vit_dim=32,
                                    vit_heads=2, n_layer=4, n_head=2, n_embd=32, vocab_size=40)).eval()
    frames = [data.to_tensor(turn.images[0])[None] for turn in scenes.make_clip(1, 32, 6).turns]
    marker = torch.tensor([[model.config.image_token_id]])
    cache, stream = model.new_cache(), torch.zeros(1, 0, dtype=torch.long)
    for i, frame in enumerate(frames):
        cached = model.generate(marker, frame, max_new_tokens=5, stop_token=7, cache=cache)
        stream = torch.cat([stream, marker], 1)
        fresh = generate_recomputing(model, stream, torch.cat(frames[:i + 1]), max_new_tokens=5, stop_token=7)
        assert torch.equal(cached, fresh), f"frame {i}"
        stream = torch.cat([stream, cached], 1)
    assert cache.pos == stream.size(1) + (len(frames) * 16 if fusion == "insertion" else 0)


def test_stop_token_ends_generation_and_pads_rows():
    model = tiny("cross")
    idx, images = sequence(1, length=10)
    greedy = model.generate(idx, images, max_new_tokens=8)
    stop = int(greedy[0, 2])
    out = model.generate(idx, images, max_new_tokens=8, stop_token=stop)
    assert out[0, -1] == stop and out.size(1) <= 3


# ---------------------------------------------------------------------------------------------- locality

def fusion_output(model, idx, images):
    """The first fusion layer's output (B, T, C), caught by wrapping what Block.forward calls for it
    (cross_every=1: its input is the embeddings, so only the layer itself decides what it sees)."""
    block, caught = model.blocks[0], []
    per_window = casa.fuse_per_window
    if block.block_wise:  # training's path: the windows' results, gathered back to (B, T, C)
        casa.fuse_per_window = lambda b, h, s: caught.append(per_window(b, h, s)) or caught[-1]
    else:
        block.fuse = lambda h, s, cache: caught.append(type(block).fuse(block, h, s, cache)) or caught[-1]
    try:
        model(idx, images)
    finally:
        casa.fuse_per_window = per_window
        block.__dict__.pop("fuse", None)
    return caught[0]


def two_windows():
    idx, images = sequence(2, length=24)  # markers at 3 and 13
    return idx, images, 13


@pytest.mark.parametrize("block_wise", [True, False])
@pytest.mark.parametrize("fusion", ["cross", "casa"])
def test_earlier_image_does_not_reach_later_window(fusion, block_wise):
    model = tiny(fusion, cross_every=1, block_wise=block_wise)
    idx, images, second = two_windows()
    changed = images.clone()
    changed[0] = torch.rand(3, 16, 16)
    before, after = fusion_output(model, idx, images), fusion_output(model, idx, changed)
    assert torch.equal(before[:, second:], after[:, second:])
    assert not torch.allclose(before[:, 3:second], after[:, 3:second])  # the first window does see it


@pytest.mark.parametrize("block_wise", [True, False])
def test_casa_earlier_window_text_does_not_reach_later_window(block_wise):
    model = tiny("casa", cross_every=1, block_wise=block_wise)
    idx, images, second = two_windows()
    changed = idx.clone()
    changed[0, 5:second] = (changed[0, 5:second] - MARK) % (VOCAB - MARK - 1) + MARK + 1  # other text, no marker
    before, after = fusion_output(model, idx, images), fusion_output(model, changed, images)
    assert torch.equal(before[:, second:], after[:, second:])
    assert not torch.allclose(before[:, 5:second], after[:, 5:second])


def test_insertion_sees_earlier_images_and_text():
    model = tiny("insertion")
    idx, images, second = two_windows()
    changed_image = images.clone()
    changed_image[0] = torch.rand(3, 16, 16)
    changed_text = idx.clone()
    changed_text[0, 5] = (changed_text[0, 5] - MARK) % (VOCAB - MARK - 1) + MARK + 1
    base = model(idx, images)[0][:, second:]
    assert not torch.allclose(base, model(idx, changed_image)[0][:, second:])
    assert not torch.allclose(base, model(changed_text, images)[0][:, second:])


@pytest.mark.parametrize("fusion", casa.FUSIONS)
def test_future_never_affects_past(fusion):
    model = tiny(fusion)
    idx, images, second = two_windows()
    changed_idx, changed_images = idx.clone(), images.clone()
    changed_idx[0, second + 1:] = MARK + 1
    changed_images[1] = torch.rand(3, 16, 16)  # the image of the later window
    before, after = model(idx, images)[0], model(changed_idx, changed_images)[0]
    assert torch.equal(before[:, :second], after[:, :second])
    assert not torch.allclose(before[:, second + 1:], after[:, second + 1:])


@pytest.mark.parametrize("fusion,gate", [("insertion", False), ("cross", False), ("cross", True), ("casa", False)])
def test_text_before_first_image_is_finite(fusion, gate):
    model = tiny(fusion, gate=gate)
    idx, images = sequence(1, length=20)
    logits = model(idx, images, targets=idx)[0]
    assert torch.isfinite(logits).all()
    loss = model(idx, images, targets=idx)[1]
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("block_wise", [True, False])
def test_cross_adds_exactly_zero_before_first_image(block_wise):
    model = tiny("cross", cross_every=1, block_wise=block_wise)
    idx, images = sequence(1, length=20)  # marker at 3
    out = fusion_output(model, idx, images)
    assert torch.equal(out[:, :3], torch.zeros_like(out[:, :3]))
    assert out[:, 3:].abs().sum() > 0


def test_gate_starts_closed():
    """Flamingo gates are zero-initialised: an untrained gated model ignores the image entirely."""
    model = tiny("cross", gate=True)
    idx, images = sequence(2, length=20)
    torch.testing.assert_close(model(idx, images)[0], model(idx, torch.rand_like(images))[0], atol=0, rtol=0)


@pytest.mark.parametrize("fusion,share", [("cross", False), ("casa", False), ("casa", True)])
def test_block_wise_equals_dense_reference(fusion, share):
    """Training computes fusion attention one window at a time; values and gradients equal the dense mask's."""
    (a, ia), (b, ib), (c, _) = sequence(1, seed=1), sequence(4, seed=2), sequence(0, seed=3)
    b[0, 0] = MARK  # a row that opens with an image, and back-to-back images
    b[0, 1] = MARK
    idx, images = torch.cat([a, b, c]), torch.cat([ia, ib, torch.rand(2, 3, 16, 16)])
    targets = torch.randint(MARK + 1, VOCAB, idx.shape)
    results = []
    for block_wise in (True, False):
        model = tiny(fusion, share_weights=share, block_wise=block_wise, cross_every=1).train()
        logits, loss = model(idx, images, targets)
        loss.backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    (windowed, grads_w), (dense, grads_d) = results
    torch.testing.assert_close(windowed, dense, atol=1e-5, rtol=1e-5)
    for name in grads_d:
        torch.testing.assert_close(grads_w[name], grads_d[name], atol=1e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------------- cache sizes

@pytest.mark.parametrize("fusion", casa.FUSIONS)
def test_cache_sizes_follow_the_paper(fusion):
    """k images of N tokens, T text tokens per window (the marker + T-1 others):
    insertion kT + kN; cross kT + N image keys held apart; casa kT + (current window text + N)."""
    model = tiny(fusion)
    c = model.config
    k, T, N = 3, 7, c.n_image_tokens
    window = torch.cat([torch.tensor([[MARK]]), torch.full((1, T - 1), MARK + 1)], 1)
    idx, images = window.repeat(1, k), torch.rand(k, 3, 16, 16)
    cache = model.new_cache()
    model(idx, images, cache=cache)
    stats = cache.stats()
    expected_self, expected_fusion = {"insertion": (k * T + k * N, 0), "cross": (k * T, N),
                                      "casa": (k * T, T + N)}[fusion]
    assert (stats["self_tokens"], stats["fusion_tokens"]) == (expected_self, expected_fusion)
    bytes_per_token = 2 * c.n_embd * 4  # keys + values, fp32
    n_fusion_layers = len(model.fusion_blocks())
    assert stats["bytes"] == bytes_per_token * (c.n_layer * expected_self + n_fusion_layers * expected_fusion)


# ---------------------------------------------------------------------------------------------- parameters, init

@pytest.mark.parametrize("fusion", ["cross", "casa"])
def test_share_weights_adds_no_attention_parameters(fusion):
    plain, shared, insertion = tiny(fusion), tiny(fusion, share_weights=True), tiny("insertion")
    attention = lambda m: sum(p.numel() for n, p in m.named_parameters() if "proj" in n and "vision" not in n)
    assert attention(shared) == attention(insertion) < attention(plain)
    counts = param_counts(shared)
    assert counts["fusion"] == len(shared.fusion_blocks()) * shared.config.n_embd  # only the norms
    assert counts["total"] == sum(p.numel() for p in shared.parameters())


@pytest.mark.parametrize("fusion", ["cross", "casa"])
def test_fusion_layers_start_as_copies_of_self_attention(fusion):
    source = tiny("insertion")
    with torch.no_grad():  # make the source's weights differ from any fresh init
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    model = tiny(fusion)
    new = model.load_pretrained(source.state_dict())
    assert new and all(".cross." in n or ".norm2." in n for n in new)
    for block in model.fusion_blocks():
        for (name, sa), ca in zip(block.attn.state_dict().items(), block.cross.state_dict().values()):
            assert torch.equal(sa, ca), name
    assert torch.equal(model.tok_emb.weight, source.tok_emb.weight)
    for block in tiny(fusion).fusion_blocks():  # a fresh model starts the same way
        assert torch.equal(block.cross.q_proj.weight, block.attn.q_proj.weight)


def test_vit_blocks_start_scaled_down_and_lm_blocks_do_not():
    """LayerScale: each ViT residual branch is multiplied by a learned per-channel gain that starts at
    vit_layer_scale; with the gains at zero the blocks are the identity. LM blocks have no gains."""
    model = tiny("casa", vit_layers=2, vit_layer_scale=0.01)
    for block in model.vision.blocks:
        assert torch.equal(block.attn_scale, torch.full((32,), 0.01))
        assert torch.equal(block.mlp_scale, torch.full((32,), 0.01))
    assert not any("scale" in name for name, _ in model.blocks.named_parameters())
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        for block in model.vision.blocks:
            block.attn_scale.zero_()
            block.mlp_scale.zero_()
        without_blocks = tiny("casa", vit_layers=0)
        without_blocks.load_state_dict(model.state_dict(), strict=False)
        torch.testing.assert_close(model.vision(images), without_blocks.vision(images), atol=0, rtol=0)
    assert tiny("casa", vit_layer_scale=0).vision.blocks[0].attn_scale is None


def test_load_pretrained_rejects_other_sizes():
    with pytest.raises(ValueError, match="sizes differ"):
        tiny("casa").load_pretrained(tiny("insertion", n_embd=64).state_dict())


def test_default_config_is_tiny():
    model = casa.VLM(casa.VLMConfig())
    assert 1_000_000 <= param_counts(model)["total"] <= 3_000_000
    assert model.config.n_image_tokens == 64


# ---------------------------------------------------------------------------------------------- errors

def test_marker_and_image_counts_must_match():
    model = tiny("casa")
    idx, images = sequence(2)
    with pytest.raises(ValueError, match="2 image markers but 1 images"):
        model(idx, images[:1])


@pytest.mark.parametrize("bad", [dict(fusion="concat"), dict(gate=True), dict(image_size=30),
                                 dict(n_embd=30), dict(cross_every=0), dict(vit_layer_scale=-0.1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        casa.VLMConfig(**bad)


@pytest.mark.parametrize("bad, says", [
    (dict(n_head=0), "n_head must be >= 1, got 0"),
    (dict(n_layer=-1), "n_layer must be >= 1, got -1"),
    (dict(patch_size=0), "patch_size must be >= 1, got 0"),
    (dict(vit_heads=0), "vit_heads must be >= 1, got 0"),
    (dict(rope_base=0.0), "rope_base must be > 0.0, got 0.0"),
    (dict(rope_base=float("nan")), "rope_base must be a finite number, got nan"),
    (dict(vit_layer_scale=float("inf")), "vit_layer_scale must be a finite number, got inf"),
    (dict(n_embd="32"), "n_embd must be int, got '32'"),
    (dict(gate="yes"), "gate must be bool, got 'yes'"),
    (dict(n_layer=2.0), "n_layer must be int, got 2.0"),
    (dict(image_token_id=96), "image_token_id 96 is outside the vocabulary (96)"),
])
def test_config_refuses_nonsense_naming_the_field(bad, says):
    """What a checkpoint's model_config or a command line may hold: refused before any layer is built."""
    with pytest.raises(ValueError, match=re.escape(says)):
        casa.VLMConfig(**bad)
    assert casa.VLMConfig(rope_base=500).rope_base == 500.0  # an int may stand for a float


# ---------------------------------------------------------------------------------------------- line budget

def test_line_budget():
    """nanoVLM promised ~750 lines and grew 2-3x: keep the files readable in one sitting."""
    root = Path(__file__).resolve().parent.parent
    for path in [*root.glob("*.py"), *(root / "exercises").glob("*.py")]:
        assert len(path.read_text().splitlines()) <= 700, path.name


def test_rolling_window_bounds_the_cache():
    """With max_text the self-attention cache keeps the latest keys only: casa's cached bytes stop growing,
    while without it (and for insertion, whose frames are in the stream) they grow with every frame."""
    frame = torch.rand(1, 3, 16, 16)
    turn = torch.tensor([[MARK, 5, 6, 7]])
    for fusion, max_text in [("casa", 16), ("casa", None), ("insertion", None)]:
        model, sizes = tiny(fusion), []
        cache = model.new_cache(max_text=max_text)
        for _ in range(12):
            model(turn, frame, cache=cache)
            sizes.append(cache.stats()["bytes"])
        steps = {b - a for a, b in zip(sizes[5:], sizes[6:])}
        if max_text:
            assert steps == {0} and cache.stats()["self_tokens"] == max_text
            assert torch.isfinite(model(turn, frame, cache=cache)[0]).all()
        else:
            per_token = 2 * model.config.n_embd * 4 * model.config.n_layer
            grows_by = 4 + (model.config.n_image_tokens if fusion == "insertion" else 0)
            assert steps == {grows_by * per_token}
