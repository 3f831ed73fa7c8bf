"""MP-Cache (mprec.nn.cache): exactness against the uncached layer, filling, LFU eviction under the bound,
invalidation when parameters change, counters, and when caches apply."""

import pytest
import torch

from mprec.nn import DHEEmbeddingBag, EmbeddingCache, HybridEmbeddingBag


def zipf_ids(n, num_ids=5000, s=1.05, generator=None):
    ranks = torch.arange(1, num_ids + 1, dtype=torch.float64)
    probs = ranks.pow(-s)
    draws = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)
    # Spread hot ids over a large id space (not 0, 1, 2, ...).
    return draws * 7919 + 13


def batches(count, size=300, bag=3, generator=None):
    for _ in range(count):
        ids = zipf_ids(size, generator=generator)
        yield ids, torch.arange(0, size, bag)


def make_layer(dtype=torch.float32, **kwargs):
    cfg = dict(k=64, m=10_007, decoder=(32, 16), activation="mish", batch_norm=True)
    cfg.update(kwargs)
    layer = DHEEmbeddingBag(8, dtype=dtype, **cfg)
    with torch.no_grad():
        for bn in layer.norms or []:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    return layer.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kinds", [("decoder",), ("encoder",), ("decoder", "encoder")])
def test_cached_output_is_bit_identical(dtype, kinds):
    layer = make_layer(dtype)
    reference = make_layer(dtype)
    reference.load_state_dict(layer.state_dict())
    for kind in kinds:
        # With both, the encoder cache sees the decoder cache's misses: give it more room so it hits too.
        layer.enable_cache(kind, max_entries=50 if kind == "decoder" and len(kinds) == 2 else 200)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for ids, offsets in batches(6, generator=g):
            got = layer(ids, offsets)
            want = reference(ids, offsets)
            assert torch.equal(got, want)
    for kind in kinds:
        cache = getattr(layer, f"{kind}_cache")
        assert cache.hits > 0 and len(cache) > 0


def test_static_fill_from_sample():
    layer = make_layer()
    cache = layer.enable_cache("decoder", max_entries=50, policy="static")
    g = torch.Generator().manual_seed(2)
    sample = zipf_ids(20_000, generator=g)
    assert layer.fill_cache(sample) == 50
    ids, counts = torch.unique(sample, return_counts=True)
    top = set(ids[torch.argsort(counts, descending=True)[:50]].tolist())
    assert set(cache.keys.tolist()) == top
    with torch.no_grad():
        # Cached vectors are the layer's own.
        torch.testing.assert_close(cache.values, layer.embed(cache.keys.clone()), rtol=0, atol=0)
        for ids, offsets in batches(3, generator=g):
            layer(ids, offsets)
    assert len(cache) == 50 and set(cache.keys.tolist()) == top  # static: never changes on its own
    assert cache.hit_rate > 0.3
    assert layer.fill_cache(sample, top_n=7) == 7


def test_lfu_respects_bound_and_keeps_hot_ids():
    layer = make_layer()
    # 40 entries take 40 x (8 floats + id + count) = 1,920 bytes and a 128-slot table 2,048: 3,968 <= 4,000;
    # 41 would take 1,968 + 2,048 > 4,000.
    cache = layer.enable_cache("decoder", max_bytes=4000)
    assert cache.max_entries == 40
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for ids, offsets in batches(20, generator=g):
            layer(ids, offsets)
            assert len(cache) <= 40 and cache.nbytes <= 4000
    assert len(cache) == 40
    # The hottest ids of the Zipf stream (ranks 0..9 -> ids 13 + 7919 r) are cached.
    hottest = {13 + 7919 * r for r in range(10)}
    assert hottest <= set(cache.keys.tolist())
    assert cache.hits + cache.misses == 20 * 300
    assert cache.unique_hits + cache.unique_misses > 0
    with torch.no_grad():  # every entry holds its own id's vector after all the replacements
        torch.testing.assert_close(cache.values, layer.embed(cache.keys.clone()), rtol=0, atol=0)


def test_counters_count_lookups():
    layer = make_layer()
    cache = layer.enable_cache("decoder", max_entries=100)
    ids = torch.tensor([5, 5, 5, 9, 11, 11])
    offsets = torch.tensor([0, 2])
    with torch.no_grad():
        layer(ids, offsets)
        assert (cache.hits, cache.misses, cache.unique_misses, cache.unique_hits) == (0, 6, 3, 0)
        layer(ids, offsets)  # with room to spare every missed id was admitted
        assert (cache.hits, cache.misses, cache.unique_hits) == (6, 6, 3)
    assert cache.hit_rate == 6 / 12
    assert sorted(cache.keys.tolist()) == [5, 9, 11]
    # Use counts: the estimate at admission (the first batch's counts) plus the hits since.
    assert dict(zip(cache.keys.tolist(), cache.counts.tolist())) == {5: 6, 9: 2, 11: 4}
    cache.reset_stats()
    assert cache.stats()["hits"] == 0


def test_full_lfu_admits_only_ids_seen_again_and_more_often():
    layer = make_layer()
    cache = layer.enable_cache("decoder", max_entries=2)
    offsets = torch.tensor([0])
    with torch.no_grad():
        layer(torch.tensor([5, 5, 5, 11, 11]), offsets)
        assert sorted(cache.keys.tolist()) == [5, 11]  # counts 3 and 2
        layer(torch.tensor([9]), offsets)
        assert sorted(cache.keys.tolist()) == [5, 11]  # seen once: the doorkeeper keeps it out
        layer(torch.tensor([9]), offsets)
        assert sorted(cache.keys.tolist()) == [5, 11]  # seen twice, but not more than 11 (2)
        layer(torch.tensor([9, 9]), offsets)  # the batch is deduplicated: 9 now counts 4 > 2
        assert sorted(cache.keys.tolist()) == [5, 9]
        layer(torch.tensor([11, 9, 5]), offsets)
    assert (cache.unique_hits, cache.unique_misses) == (0 + 0 + 0 + 0 + 2, 2 + 1 + 1 + 1 + 1)


@pytest.mark.parametrize("change", ["optimizer", "load_state_dict", "in_place", "batch_norm_stats"])
def test_invalidated_when_parameters_change(change):
    layer = make_layer()
    cache = layer.enable_cache("decoder", max_entries=500)
    encoder = layer.enable_cache("encoder", max_entries=500)
    ids = zipf_ids(300, generator=torch.Generator().manual_seed(4))
    offsets = torch.arange(0, 300, 3)
    with torch.no_grad():
        before = layer(ids, offsets)
        assert len(cache) > 0 and len(encoder) > 0
    if change == "optimizer":
        layer.train()
        opt = torch.optim.SGD(layer.parameters(), lr=0.5)
        layer(ids, offsets).pow(2).sum().backward()
        opt.step()
        layer.eval()
    elif change == "load_state_dict":
        other = make_layer(seed=0)
        other.load_state_dict({k: (v + 0.5 if v.is_floating_point() else v) for k, v in layer.state_dict().items()})
        layer.load_state_dict(other.state_dict())
    elif change == "in_place":
        with torch.no_grad():
            layer.layers[-1].bias.add_(1.0)
    else:
        with torch.no_grad():
            layer.norms[0].running_mean.add_(1.0)
    fresh = make_layer()
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        after = layer(ids, offsets)
        assert not torch.equal(after, before)
        assert torch.equal(after, fresh(ids, offsets))
    assert cache.invalidations == 1 and encoder.invalidations == 1


def test_caches_only_in_inference():
    layer = make_layer(batch_norm=False)
    cache = layer.enable_cache("decoder", max_entries=100)
    ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([0])
    layer.train()
    with torch.no_grad():
        layer(ids, offsets)
    layer.eval()
    out = layer(ids, offsets)  # autograd on: hits would carry no gradient
    assert out.requires_grad and cache.hits + cache.misses == 0
    with torch.inference_mode():
        a = layer(ids, offsets)
        b = layer(ids, offsets)  # admitted after the first
        c = layer(ids, offsets)
    assert torch.equal(a, b) and torch.equal(a, c) and cache.hits == 6


def test_hybrid_cache_exact():
    h = HybridEmbeddingBag(1000, 4, 8, k=32, m=1009, decoder=(16,)).eval()
    cache = h.enable_cache("decoder", max_entries=30)
    ids = zipf_ids(400, num_ids=900, generator=torch.Generator().manual_seed(5)) % 1000
    offsets = torch.arange(0, 400, 4)
    with torch.no_grad():
        want = h(ids, offsets)
        assert torch.equal(h(ids, offsets), want)
    assert h.decoder_cache is cache and cache.hits > 0


def test_cache_argument_errors():
    with pytest.raises(ValueError, match="exactly one of max_bytes and max_entries"):
        EmbeddingCache(4)
    with pytest.raises(ValueError, match="policy"):
        EmbeddingCache(4, max_entries=3, policy="lru")
    with pytest.raises(ValueError, match="room for no entry"):
        EmbeddingCache(4, max_bytes=10)
    layer = make_layer()
    with pytest.raises(ValueError, match="kind must be"):
        layer.enable_cache("table")
    with pytest.raises(ValueError, match="no 'encoder' cache"):
        layer.fill_cache(torch.tensor([1, 2]), kind="encoder")
