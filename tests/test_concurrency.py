"""Concurrent inference: every layer kind called from 4-8 threads at once gives, bit for bit, what it gives
called from one thread, with each MP-Cache policy and kind and with evictions; the caches' counters count
every lookup exactly once and their entries stay exact."""

import copy
import threading

import pytest
import torch

from mprec.models import DLRM
from mprec.nn import MLP, DHEEmbeddingBag, EmbeddingBag, EmbeddingBagCollection, HybridEmbeddingBag
from mprec.ops import dlrm_interaction
from mprec.ops.cache import unique_ids

from test_nn_cache import zipf_ids

ROUNDS = 3


def run_threads(call, inputs, threads):
    """Each thread calls ``call`` on every input, ROUNDS times, from its own starting point, all starting at
    once; returns ``{input index: [outputs]}`` and re-raises the first error of any thread."""
    outputs = {i: [] for i in range(len(inputs))}
    errors, lock = [], threading.Lock()
    barrier = threading.Barrier(threads)

    def work(t):
        try:
            barrier.wait()
            order = [(t + j) % len(inputs) for j in range(len(inputs))] * ROUNDS
            for i in order:
                with torch.no_grad():
                    out = call(*inputs[i])
                with lock:
                    outputs[i].append(out)
        except BaseException as e:  # noqa: BLE001 (re-raised below, in the test's thread)
            with lock:
                errors.append(e)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in pool), "a thread did not finish"
    if errors:
        raise errors[0]
    assert all(len(v) == threads * ROUNDS for v in outputs.values())
    return outputs


def check_concurrent(module, reference, inputs, threads):
    """``module`` called from ``threads`` threads equals ``reference`` (the same weights, no caches) called
    from this one, bit for bit."""
    with torch.no_grad():
        want = [reference(*x) for x in inputs]
    got = run_threads(module, inputs, threads)
    for i, outs in got.items():
        for out in outs:
            assert out.dtype == want[i].dtype and torch.equal(out, want[i]), f"input {i} differs"


def bag_inputs(count, size=256, bag=4, num_ids=5000, seed=0, bound=None):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(count):
        ids = zipf_ids(size, num_ids=num_ids, generator=g)
        if bound is not None:
            ids = ids % bound
        inputs.append((ids, torch.arange(0, size, bag)))
    return inputs


def dhe_layer(**kwargs):
    cfg = dict(k=64, m=10_007, decoder=(32, 16), activation="mish", batch_norm=True)
    cfg.update(kwargs)
    layer = DHEEmbeddingBag(8, **cfg)
    with torch.no_grad():
        for bn in layer.norms or []:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    return layer.eval()


def uses(inputs, threads):
    """(every lookup, every distinct id of a batch) over all the calls of run_threads."""
    lookups = sum(ids.numel() for ids, _ in inputs) * threads * ROUNDS
    distinct = sum(unique_ids(ids)[0].numel() for ids, _ in inputs) * threads * ROUNDS
    return lookups, distinct


def check_cache_exact(layer, kind, cache):
    """Every entry holds its id's vector as the layer computes it now, and the index finds each entry."""
    keys, values, _ = cache.entries()
    assert keys.numel() == len(set(keys.tolist())) <= cache.max_entries
    with torch.no_grad():
        fresh = layer._first_layer(keys) if kind == "encoder" else layer._later_layers(layer._first_layer(keys))
    assert torch.equal(values, fresh)
    found, miss, _ = cache.lookup(keys, torch.zeros_like(keys))
    assert miss.numel() == 0 and torch.equal(found, values)


@pytest.mark.parametrize("threads", [4, 8])
@pytest.mark.parametrize("kinds,policy", [
    (("decoder",), "lfu"), (("encoder",), "lfu"), (("decoder", "encoder"), "lfu"),
    (("decoder",), "static"), (("encoder",), "static"),
])
def test_dhe_with_caches(threads, kinds, policy):
    layer = dhe_layer()
    reference = copy.deepcopy(layer)
    inputs = bag_inputs(8)
    caches = {}
    for kind in kinds:
        # Far fewer entries than distinct ids: online admission evicts all the time.
        caches[kind] = layer.enable_cache(kind, max_entries=150, policy=policy)
        if policy == "static":
            layer.fill_cache(torch.cat([ids for ids, _ in inputs]), kind)
            caches[kind].reset_stats()
    check_concurrent(layer, reference, inputs, threads)
    lookups, distinct = uses(inputs, threads)
    outer = caches.get("decoder", caches.get("encoder"))
    stats = outer.stats()
    assert stats["hits"] + stats["misses"] == lookups
    assert stats["unique_hits"] + stats["unique_misses"] == distinct
    assert stats["hits"] > 0
    if policy == "lfu":
        assert stats["evictions"] > 0
    if len(kinds) == 2:  # the encoder cache sees exactly the decoder cache's misses
        inner = caches["encoder"].stats()
        assert inner["hits"] + inner["misses"] == stats["misses"]
        assert inner["unique_hits"] + inner["unique_misses"] == stats["unique_misses"]
    for kind, cache in caches.items():
        check_cache_exact(layer, kind, cache)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dhe_cache_dtypes(dtype):
    layer = dhe_layer(dtype=dtype)
    reference = copy.deepcopy(layer)
    layer.enable_cache("decoder", max_entries=100)
    check_concurrent(layer, reference, bag_inputs(6, seed=1), 4)
    check_cache_exact(layer, "decoder", layer.decoder_cache)


def test_dhe_without_cache():
    layer = dhe_layer(batch_norm=False, activation="relu")
    check_concurrent(layer, copy.deepcopy(layer), bag_inputs(6, seed=2), 8)


def test_cache_enabled_and_disabled_while_serving():
    """Attaching or dropping a cache while other threads serve never changes an answer."""
    layer = dhe_layer()
    reference = copy.deepcopy(layer)
    inputs = bag_inputs(6, seed=3)
    with torch.no_grad():
        want = [reference(*x) for x in inputs]
    stop = threading.Event()

    def toggle():
        i = 0
        while not stop.is_set():
            if i % 2:
                layer.disable_cache("decoder")
            else:
                layer.enable_cache("decoder", max_entries=100)
            i += 1

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        got = run_threads(layer, inputs, 4)
    finally:
        stop.set()
        toggler.join()
    for i, outs in got.items():
        assert all(torch.equal(out, want[i]) for out in outs)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_embedding_bag(mode, index_dtype):
    torch.manual_seed(0)
    layer = EmbeddingBag(997, 33, mode=mode).eval()
    inputs = [(ids.to(index_dtype), offsets.to(index_dtype)) for ids, offsets in bag_inputs(8, bound=997)]
    check_concurrent(layer, copy.deepcopy(layer), inputs, 8)


def test_embedding_bag_max_norm():
    """max_norm renormalises the weight in place; concurrent calls must never scale a row twice (two threads
    reading the same norm and both scaling it) nor pool a half-scaled row. Renormalising an already
    renormalised row may move it by a rounding error, so the answers are compared to that tolerance."""
    torch.manual_seed(0)
    layer = EmbeddingBag(500, 16, mode="sum", max_norm=1.0).eval()
    with torch.no_grad():
        layer.weight.mul_(3)
    original_norms = layer.weight.detach().norm(dim=1)
    reference = copy.deepcopy(layer)
    inputs = bag_inputs(8, bound=500)
    with torch.no_grad():
        want = [reference(*x) for x in inputs]
    got = run_threads(layer, inputs, 8)
    for i, outs in got.items():
        for out in outs:
            torch.testing.assert_close(out, want[i], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight, reference.weight, rtol=1e-5, atol=1e-6)
    read = torch.unique(torch.cat([ids for ids, _ in inputs]))
    norms = layer.weight.detach().norm(dim=1)[read]
    expected = original_norms[read].clamp(max=1.0)
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=0)


def test_hybrid_with_cache():
    torch.manual_seed(0)
    layer = HybridEmbeddingBag(5000, 8, 8, k=32, m=10_007, decoder=(16,)).eval()
    reference = copy.deepcopy(layer)
    layer.enable_cache("decoder", max_entries=100)
    inputs = bag_inputs(6, bound=5000, seed=4)
    check_concurrent(layer, reference, inputs, 4)
    assert layer.decoder_cache.stats()["evictions"] > 0
    check_cache_exact(layer.dhe, "decoder", layer.decoder_cache)


def collection(**kwargs):
    torch.manual_seed(0)
    return EmbeddingBagCollection([5000, 300, 5000], 8, representations=["dhe", "table", "hybrid"],
                                  dhe=dict(k=32, m=10_007, decoder=(16,)), **kwargs).eval()


def tbe_inputs(count, tables=3, batch=64, seed=5):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(count):
        lengths = torch.randint(0, 5, (tables * batch,), generator=g)
        ids = zipf_ids(int(lengths.sum()), generator=g) % 300
        inputs.append((ids, torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])))
    return inputs


@pytest.mark.parametrize("policy", ["lfu", "static"])
def test_collection_with_caches(policy):
    layer = collection()
    reference = copy.deepcopy(layer)
    inputs = tbe_inputs(6)
    for dhe in layer.dhe_modules().values():
        dhe.enable_cache("decoder", max_entries=60, policy=policy)
        if policy == "static":
            dhe.fill_cache(torch.cat([ids for ids, _ in inputs]))
    check_concurrent(layer, reference, inputs, 6)
    for dhe in layer.dhe_modules().values():
        check_cache_exact(dhe, "decoder", dhe.decoder_cache)


def test_collection_keyed_jagged_tensor():
    KeyedJaggedTensor = pytest.importorskip("torchrec.sparse.jagged_tensor").KeyedJaggedTensor
    layer = collection()
    reference = copy.deepcopy(layer)
    for dhe in layer.dhe_modules().values():
        dhe.enable_cache("decoder", max_entries=60)
    kjts = []
    for ids, offsets in tbe_inputs(4, seed=6):
        kjts.append((KeyedJaggedTensor(keys=layer.feature_names, values=ids, offsets=offsets),))

    def values(kt):
        return kt.values()

    with torch.no_grad():
        want = [values(reference(*x)) for x in kjts]
    got = run_threads(lambda kjt: values(layer(kjt)), kjts, 4)
    for i, outs in got.items():
        assert all(torch.equal(out, want[i]) for out in outs)


def test_dlrm_with_caches():
    torch.manual_seed(0)
    model = DLRM([5000, 300, 5000], embedding_dim=8, bottom=(16, 8), top=(16, 1), num_dense=4,
                 representations=["dhe", "table", "hybrid"], dhe=dict(k=32, m=10_007, decoder=(16,))).eval()
    reference = copy.deepcopy(model)
    for dhe in model.embeddings.dhe_modules().values():
        dhe.enable_cache("decoder", max_entries=60)
    g = torch.Generator().manual_seed(7)
    inputs = [(torch.randn(64, 4, generator=g), ids, offsets) for ids, offsets in tbe_inputs(6)]
    check_concurrent(model, reference, inputs, 4)


def test_mlp_and_interaction():
    torch.manual_seed(0)
    mlp = MLP([13, 64, 16], last_activation=True).eval()
    g = torch.Generator().manual_seed(8)
    inputs = [(torch.randn(int(b), 13, generator=g),) for b in (1, 7, 64, 300)]
    check_concurrent(mlp, copy.deepcopy(mlp), inputs, 8)
    pairs = [(torch.randn(b, 16, generator=g), torch.randn(b, 5 * 16, generator=g)) for b in (0, 3, 64)]
    check_concurrent(lambda d, s: dlrm_interaction(d, s, 8), lambda d, s: dlrm_interaction(d, s, 8), pairs, 8)


def test_cache_copies_and_pickles():
    """A cache holds a lock, which cannot be copied: a copied or pickled layer gets its own, and the copy
    serves the same answers."""
    import pickle

    layer = dhe_layer()
    layer.enable_cache("decoder", max_entries=50)
    inputs = bag_inputs(2, seed=9)
    with torch.no_grad():
        want = [layer(*x) for x in inputs]
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert len(clone.decoder_cache) == len(layer.decoder_cache)
        assert clone.decoder_cache._lock is not layer.decoder_cache._lock
        check_concurrent(clone, layer, inputs, 4)
        with torch.no_grad():
            assert all(torch.equal(clone(*x), w) for x, w in zip(inputs, want))
