"""mprec.nn.DHEEmbeddingBag, HybridEmbeddingBag and the per-feature representations of
EmbeddingBagCollection, against float64 references built from reference."""

import pytest
import torch

import reference

import mprec
from mprec.nn import DHEEmbeddingBag, EmbeddingBagCollection, HybridEmbeddingBag
from reference import dhe_encode_linear_reference, rowwise_linear_reference

from conftest import make_bags


def decode_reference(layer: DHEEmbeddingBag, ids: torch.Tensor) -> torch.Tensor:
    """Every lookup decoded on its own, in float64, from the formula (no deduplication)."""
    first = layer.layers[0]
    last = len(layer.layers) == 1
    act = "none" if last or layer.batch_norm else layer.activation
    x = dhe_encode_linear_reference(ids, layer.hash_a, layer.hash_b, layer.p, layer.m, layer.transform,
                                    first.weight, first.bias, act)
    for i in range(len(layer.layers)):
        if i > 0:
            lin = layer.layers[i]
            last = i == len(layer.layers) - 1
            act = "none" if last or layer.batch_norm else layer.activation
            x = rowwise_linear_reference(x, lin.weight.double(), lin.bias.double(), act)
        if i < len(layer.layers) - 1 and layer.batch_norm:
            bn = layer.norms[i]
            x = torch.nn.functional.batch_norm(x, bn.running_mean.double(), bn.running_var.double(),
                                               bn.weight.double(), bn.bias.double(), False, 0.0, bn.eps)
            x = torch.relu(x) if layer.activation == "relu" else (
                torch.nn.functional.mish(x) if layer.activation == "mish" else x)
    return x


def bag_reference(layer, indices, offsets, per_sample_weights=None, include_last_offset=False):
    vectors = decode_reference(layer, indices)
    rows = torch.arange(indices.numel())
    return torch.nn.functional.embedding_bag(rows, vectors, offsets, mode=layer.mode,
                                             per_sample_weights=None if per_sample_weights is None
                                             else per_sample_weights.double(),
                                             include_last_offset=include_last_offset)


def randomize_norms(layer):
    if layer.norms is not None:
        with torch.no_grad():
            for bn in layer.norms:
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.normal_()
                bn.bias.normal_()


CONFIGS = {
    "default": dict(),
    "deep-mish-bn": dict(decoder=(24, 12), activation="mish", batch_norm=True),
    "gaussian": dict(transform="gaussian"),
    "no-hidden": dict(decoder=()),
    "linear-act": dict(activation="none", decoder=(8,)),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_dhe_embedding_bag_matches_reference(config, mode, index_dtype, isa):
    layer = DHEEmbeddingBag(5, k=34, m=997, decoder=CONFIGS[config].get("decoder", (16,)), mode=mode, seed=3,
                            **{k: v for k, v in CONFIGS[config].items() if k != "decoder"})
    randomize_norms(layer)
    layer.eval()
    # Ids far beyond m and repeated ids: deduplication must not change the result.
    indices, offsets = make_bags(9, 6, 50, index_dtype)
    indices = indices * 40_000_003 if index_dtype == torch.int64 else indices
    out = layer(indices, offsets[:-1])
    ref = bag_reference(layer, indices, offsets[:-1])
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)


def test_dhe_weighted_2d_and_last_offset():
    layer = DHEEmbeddingBag(3, k=16, m=101, decoder=(8,))
    indices, offsets = make_bags(7, 5, 1000)
    psw = torch.randn(indices.numel())
    out = layer(indices, offsets[:-1], psw)
    torch.testing.assert_close(out.double(), bag_reference(layer, indices, offsets[:-1], psw), rtol=2e-5, atol=2e-5)
    last = DHEEmbeddingBag(3, k=16, m=101, decoder=(8,), include_last_offset=True)
    last.load_state_dict(layer.state_dict())
    torch.testing.assert_close(last(indices, offsets).double(),
                               bag_reference(layer, indices, offsets, include_last_offset=True), rtol=2e-5, atol=2e-5)
    fixed = torch.randint(0, 10**9, (4, 3))
    torch.testing.assert_close(layer(fixed).double(), bag_reference(layer, fixed.reshape(-1), torch.arange(0, 12, 3)),
                               rtol=2e-5, atol=2e-5)


def test_dhe_empty_bags_and_empty_batch():
    layer = DHEEmbeddingBag(4, k=8, m=50, decoder=(6,))
    out = layer(torch.empty(0, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    assert out.shape == (3, 4) and torch.equal(out, torch.zeros(3, 4))
    assert layer(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)).shape == (0, 4)


@pytest.mark.parametrize("activation", ["relu", "mish"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_dhe_gradients_match_reference(activation, batch_norm):
    layer = DHEEmbeddingBag(4, k=20, m=211, decoder=(12, 6), activation=activation, batch_norm=batch_norm,
                            dtype=torch.float64)
    randomize_norms(layer)
    layer.eval()  # batch norm from running statistics, as the reference
    indices, offsets = make_bags(6, 5, 300)
    psw = torch.randn(indices.numel(), dtype=torch.float64)
    out = layer(indices, offsets[:-1], psw)
    grad = torch.randn_like(out)
    params = [p for p in layer.parameters()]
    got = torch.autograd.grad(out, params, grad)
    ref = bag_reference(layer, indices, offsets[:-1], psw)
    want = torch.autograd.grad(ref, params, grad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_dhe_training_step_changes_output():
    layer = DHEEmbeddingBag(4, k=16, m=101, decoder=(8,), batch_norm=True)
    indices, offsets = make_bags(8, 4, 100)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer(indices, offsets[:-1]).detach()
    layer(indices, offsets[:-1]).pow(2).sum().backward()
    opt.step()
    assert not torch.allclose(before, layer(indices, offsets[:-1]).detach())


def test_state_dict_round_trip_and_seeds():
    a = DHEEmbeddingBag(4, k=16, m=1000, seed=1)
    same = DHEEmbeddingBag(4, k=16, m=1000, seed=1)
    other = DHEEmbeddingBag(4, k=16, m=1000, seed=2)
    assert torch.equal(a.hash_a, same.hash_a) and torch.equal(a.hash_b, same.hash_b)
    assert not torch.equal(a.hash_a, other.hash_a)
    assert {"hash_a", "hash_b"} <= set(a.state_dict())
    other.load_state_dict(a.state_dict())
    ids = torch.randint(0, 10**6, (30,))
    offsets = torch.tensor([0, 10, 10, 25])
    assert torch.equal(other.hash_a, a.hash_a)
    assert torch.equal(other(ids, offsets), a(ids, offsets))


def test_constructor_errors():
    with pytest.raises(ValueError, match="activation"):
        DHEEmbeddingBag(4, activation="tanh")
    with pytest.raises(ValueError, match="gaussian transform needs an even k"):
        DHEEmbeddingBag(4, k=15, transform="gaussian")
    with pytest.raises(ValueError, match="mode"):
        DHEEmbeddingBag(4, mode="median")
    with pytest.raises(ValueError, match="negative"):
        DHEEmbeddingBag(4, k=8, m=50)(torch.tensor([1, -2]), torch.tensor([0]))


def test_hybrid_is_table_then_dhe():
    h = HybridEmbeddingBag(100, 6, 4, k=16, m=97, decoder=(8,), mode="mean")
    indices, offsets = make_bags(5, 4, 100)
    out = h(indices, offsets[:-1])
    assert out.shape == (5, 10)
    torch.testing.assert_close(out[:, :6], torch.nn.functional.embedding_bag(indices, h.table.weight, offsets[:-1],
                                                                             mode="mean"))
    torch.testing.assert_close(out[:, 6:].double(), bag_reference(h.dhe, indices, offsets[:-1]), rtol=2e-5, atol=2e-5)
    out.sum().backward()
    assert h.table.weight.grad is not None and h.dhe.layers[0].weight.grad is not None


def _tbe(num_embeddings, B, max_len=4, generator=None):
    T = len(num_embeddings)
    lengths = torch.randint(0, max_len + 1, (T * B,), generator=generator)
    offsets = torch.zeros(T * B + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    indices = torch.cat([torch.randint(0, n, (int(lengths[t * B:(t + 1) * B].sum()),), generator=generator)
                         for t, n in enumerate(num_embeddings)])
    return indices, offsets


@pytest.mark.parametrize("reps", [["table", "dhe", "hybrid"], ["dhe", "dhe"], ["hybrid", "table", "table"]])
def test_collection_representations(reps):
    num = [40, 50, 60][: len(reps)]
    ecb = EmbeddingBagCollection(num, [8, 6, 4][: len(reps)], representations=reps, dhe=dict(k=16, m=97, decoder=(8,)))
    B = 5
    indices, offsets = _tbe(num, B)
    psw = torch.randn(indices.numel())
    out = ecb(indices, offsets, psw)
    col = 0
    for t, (r, feature) in enumerate(zip(reps, ecb.features())):
        assert feature.kind == r
        s, e = int(offsets[t * B]), int(offsets[(t + 1) * B])
        idx, off, w = indices[s:e], offsets[t * B:(t + 1) * B] - s, psw[s:e]
        parts = []
        if r != "dhe":
            parts.append(torch.nn.functional.embedding_bag(idx, feature.weight, off, mode="sum",
                                                           per_sample_weights=w))
        if r != "table":
            parts.append(feature.dhe(idx, off, w))
        want = torch.cat(parts, dim=1)
        torch.testing.assert_close(out[:, col:col + want.shape[1]], want, rtol=1e-5, atol=1e-5)
        col += want.shape[1]
    assert col == out.shape[1] == sum(ecb.embedding_dims)
    out.sum().backward()


def test_collection_representation_errors():
    with pytest.raises(ValueError, match="representation of table 't1'"):
        EmbeddingBagCollection([10, 10], 4, representations=["table", "tables"])
    with pytest.raises(ValueError, match="2 representations for 3 tables"):
        EmbeddingBagCollection([10, 10, 10], 4, representations=["table", "dhe"])
    with pytest.raises(ValueError, match="padding_idx is for table features; table 't1' is 'dhe'"):
        EmbeddingBagCollection([10, 10], 4, representations=["table", "dhe"], padding_idx=[None, 1])


@pytest.mark.parametrize("kind", ["dhe", "hybrid"])
def test_compile_fullgraph(kind):
    torch._dynamo.reset()
    layer = (DHEEmbeddingBag(4, k=16, m=97, decoder=(8,)) if kind == "dhe"
             else HybridEmbeddingBag(50, 4, 4, k=16, m=97, decoder=(8,)))
    indices, offsets = make_bags(6, 4, 50)
    want = layer(indices, offsets[:-1])
    # Deduplicating ids has a data-dependent size, which dynamo captures only with this option.
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        got = torch.compile(layer, fullgraph=True)(indices, offsets[:-1])
    torch.testing.assert_close(got, want)
