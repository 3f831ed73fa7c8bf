"""mprec.nn.EmbeddingBagCollection in TorchRec's interface: built from EmbeddingBagConfigs, KeyedJaggedTensor in,
KeyedTensor out, TorchRec's state dict keys; against TorchRec's own collection and a float64 reference. Also:
the DLRM reads the collection's output by key, shared tables train once per step, and mprec works without
TorchRec installed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

torchrec = pytest.importorskip("torchrec", reason="TorchRec is installed by make test")
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor, PoolingType  # noqa: E402
from torchrec.types import DataType  # noqa: E402

from mprec.models import DLRM  # noqa: E402
from mprec.ops import dlrm_interaction  # noqa: E402
from mprec.nn import EmbeddingBagCollection, FusedOptimizer  # noqa: E402


def tables(data_type=DataType.FP32):
    """t1 serves two features; f5 is served by two tables (keys f5@t4, f5@t5); t2 pools by mean."""
    spec = [("t0", 50, 8, ["f0"], PoolingType.SUM), ("t1", 30, 4, ["f1", "f2"], PoolingType.SUM),
            ("t2", 40, 12, ["f3"], PoolingType.MEAN), ("t4", 25, 4, ["f5"], PoolingType.SUM),
            ("t5", 25, 8, ["f5"], PoolingType.SUM)]
    return [EmbeddingBagConfig(name=n, num_embeddings=rows, embedding_dim=d, feature_names=fs, pooling=p,
                               data_type=data_type) for n, rows, d, fs, p in spec]


KEYS = ["f0", "f1", "f2", "f3", "f5"]


def kjt(keys=KEYS, batch=5, seed=0, weighted=False, max_id=25):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(keys) * batch,), generator=g)
    lengths[0] = 0  # an empty bag
    values = torch.randint(0, max_id, (int(lengths.sum()),), generator=g)
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor(keys=list(keys), values=values, lengths=lengths, weights=weights)


def reference(collection, features, weighted=False):
    """Each (table, feature) pooled in float64 by torch, keyed as TorchRec keys them."""
    by_key = features.to_dict()
    out = {}
    for config in collection.embedding_bag_configs():
        weight = collection.embedding_bags[config.name].weight.detach().double()
        for f in config.feature_names:
            key = f"{f}@{config.name}" if f == "f5" else f
            jt = by_key[f]
            out[key] = F.embedding_bag(jt.values(), weight, jt.offsets(), mode=config.pooling.value.lower(),
                                       include_last_offset=True,
                                       per_sample_weights=jt.weights().double() if weighted else None)
    return out


@pytest.mark.parametrize("weighted", [False, True])
def test_keyed_forward_matches_torchrec_and_float64(weighted):
    configs = tables()
    if weighted:
        for c in configs:
            c.pooling = PoolingType.SUM
    mine = EmbeddingBagCollection(tables=configs, is_weighted=weighted)
    theirs = torchrec.EmbeddingBagCollection(tables=tables() if not weighted else configs, is_weighted=weighted)
    assert list(mine.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(mine.state_dict())
    features = kjt(KEYS[::-1], weighted=weighted)  # keys in another order than the collection's
    got, want = mine(features), theirs(features)
    assert got.keys() == want.keys() == ["f0", "f1", "f2", "f3", "f5@t4", "f5@t5"]
    assert got.length_per_key() == want.length_per_key() == [8, 4, 4, 12, 4, 8]
    exact = reference(mine, features, weighted)
    for key in got.keys():
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got[key].double(), exact[key], rtol=1e-6, atol=1e-6)
    got.values().sum().backward()
    assert all(p.grad is not None for p in mine.parameters())
    # And back: TorchRec's weights into mprec's collection.
    theirs2 = torchrec.EmbeddingBagCollection(tables=tables() if not weighted else configs, is_weighted=weighted)
    mine.load_state_dict(theirs2.state_dict())
    torch.testing.assert_close(mine(features).values(), theirs2(features).values(), rtol=1e-6, atol=1e-6)


def test_half_precision_tables_return_float32_as_torchrec_does():
    mine = EmbeddingBagCollection(tables=tables(DataType.FP16))
    theirs = torchrec.EmbeddingBagCollection(tables=tables(DataType.FP16))
    theirs.load_state_dict(mine.state_dict())
    assert mine.embedding_bags["t0"].weight.dtype == torch.float16
    features = kjt()
    got, want = mine(features), theirs(features)
    assert got.values().dtype == want.values().dtype == torch.float32
    torch.testing.assert_close(got.values(), want.values(), rtol=2e-3, atol=2e-3)


def test_tbe_interface_gives_the_same_vectors():
    mine = EmbeddingBagCollection(tables=tables())
    features = kjt()
    indices, offsets, _ = mine.keyed_to_tbe(features)
    assert mine.feature_names == ["f0", "f1", "f2", "f3", "f5", "f5"]  # one entry per (table, feature)
    torch.testing.assert_close(mine(indices, offsets), mine(features).values())


def test_meta_device_allocates_nothing_and_materialises():
    configs = tables()
    meta = EmbeddingBagCollection(tables=configs, representations={"t2": "dhe", "t0": "hybrid"},
                                  dhe=dict(k=8, m=97, decoder=(4,)), device="meta")
    assert meta.embedding_bag_configs() is not None and [c.name for c in meta.embedding_bag_configs()] == \
        ["t0", "t1", "t2", "t4", "t5"]
    assert meta.device == torch.device("meta")
    assert all(p.is_meta for p in meta.parameters())
    # The hash parameters follow from the seed, so they survive materialisation.
    dhe = meta.dhe_modules()["t2"]
    assert not dhe.hash_a.is_meta
    real = EmbeddingBagCollection(tables=configs, representations={"t2": "dhe", "t0": "hybrid"},
                                  dhe=dict(k=8, m=97, decoder=(4,)))
    meta.to_empty(device="cpu")
    meta.reset_parameters()
    torch.testing.assert_close(meta.dhe_modules()["t2"].hash_a, real.dhe_modules()["t2"].hash_a)
    meta.load_state_dict(real.state_dict())
    features = kjt()
    torch.testing.assert_close(meta(features).values(), real(features).values())


def test_representations_by_table_name():
    mine = EmbeddingBagCollection(tables=tables(), representations={"t0": "dhe", "t2": "hybrid"},
                                  dhe=dict(k=16, m=97, decoder=(8,)), hybrid_dhe_dim={"t2": 5}, hybrid_form="split")
    assert mine.representations == ["dhe", "table", "table", "hybrid", "table", "table"]
    assert mine.embedding_bags["t2"].table_dim == 7
    assert [c.embedding_dim for c in mine.table_configs()] == [4, 7, 4, 8]  # what TorchRec would shard
    out = mine(kjt())
    assert out.length_per_key() == [8, 4, 4, 12, 4, 8]
    features = kjt()
    by_key = features.to_dict()
    jt = by_key["f0"]
    torch.testing.assert_close(out["f0"], mine.embedding_bags["t0"].dhe(jt.values(), jt.offsets()[:-1]))
    assert any(k.startswith("embedding_bags.t0.dhe.") for k in mine.state_dict())


def test_hybrid_in_two_vectors():
    """The MP-Rec artifact's hybrid (the default): the table part and the DHE part each have the table's width,
    and the feature's vector is both side by side; TorchRec shards the table part at the table's width."""
    mine = EmbeddingBagCollection(tables=tables(), representations={"t2": "hybrid"}, dhe=dict(k=16, m=97, decoder=(8,)))
    t2 = mine.embedding_bags["t2"]
    assert (t2.table_dim, t2.dhe.embedding_dim, t2.embedding_dim) == (12, 12, 24)
    assert [c.embedding_dim for c in mine.table_configs()] == [8, 4, 12, 4, 8]
    assert [c.embedding_dim for c in mine.embedding_bag_configs()] == [8, 4, 12, 4, 8]  # as declared
    features = kjt()
    out = mine(features)
    assert out.length_per_key() == [8, 4, 4, 24, 4, 8]
    jt = features.to_dict()["f3"]
    ids, offsets = jt.values(), jt.offsets()[:-1]
    want = torch.cat([torch.nn.functional.embedding_bag(ids, t2.weight, offsets, mode="mean"), t2.dhe(ids, offsets)], 1)
    torch.testing.assert_close(out["f3"], want)
    with pytest.raises(ValueError, match="hybrid_dhe_dim divides a hybrid's width in hybrid_form='split'"):
        EmbeddingBagCollection(tables=tables(), representations={"t2": "hybrid"}, hybrid_dhe_dim=4)
    with pytest.raises(ValueError, match=r"hybrid_form must be one of \('two', 'split'\), got 'three'"):
        EmbeddingBagCollection(tables=tables(), hybrid_form="three")


def test_construction_and_input_errors():
    with pytest.raises(ValueError, match="duplicate table name 't0'"):
        EmbeddingBagCollection(tables=tables()[:1] * 2)
    bad = tables()
    bad[1].pooling = PoolingType.NONE
    with pytest.raises(ValueError, match="table 't1' has pooling NONE; an embedding bag pools by SUM or MEAN"):
        EmbeddingBagCollection(tables=bad)
    with pytest.raises(ValueError, match="table 't0' has data_type INT8"):
        EmbeddingBagCollection(tables=tables(DataType.INT8))
    with pytest.raises(ValueError, match=r"representations names tables \['t9'\]"):
        EmbeddingBagCollection(tables=tables(), representations={"t9": "dhe"})
    with pytest.raises(ValueError, match="give either tables"):
        EmbeddingBagCollection([10], 4, tables=tables())
    with pytest.raises(ValueError, match="table 't0' pools by max, which TorchRec's configs cannot express"):
        EmbeddingBagCollection([10], 4, mode="max").embedding_bag_configs()
    with pytest.raises(ValueError, match="weighted features are pooled by sum"):
        EmbeddingBagCollection(tables=tables(), is_weighted=True)
    mine = EmbeddingBagCollection(tables=tables())
    # A state dict of other tables: torch names the keys and shapes.
    other = torchrec.EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t0", num_embeddings=51, embedding_dim=8,
                                                                       feature_names=["f0"])])
    with pytest.raises(RuntimeError, match=r"size mismatch for embedding_bags\.t0\.weight.*\[51, 8\].*\[50, 8\]"):
        mine.load_state_dict(other.state_dict(), strict=False)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: .*embedding_bags\.t1\.weight"):
        mine.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match=r"missing \['f5'\]; unknown \['g'\]"):
        mine(kjt(["f0", "f1", "f2", "f3", "g"]))
    weighted = [EmbeddingBagConfig(name="t0", num_embeddings=50, embedding_dim=8, feature_names=["f0"])]
    with pytest.raises(ValueError, match="is_weighted=True.*has no weights"):
        EmbeddingBagCollection(tables=weighted, is_weighted=True)(kjt(["f0"]))
    variable = KeyedJaggedTensor(keys=["f0"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1]),
                                 stride_per_key_per_rank=[[2]], inverse_indices=(["f0"], torch.tensor([[0, 1]])))
    with pytest.raises(ValueError, match="batch size per feature"):
        EmbeddingBagCollection(tables=weighted)(variable)


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_a_shared_table_is_updated_once_per_step(optimizer):
    """t1 serves f1 and f2: the fused step uses the sum of both features' gradients (FBGEMM's exact
    optimizers), which for row-wise Adagrad differs from two steps."""
    torch.manual_seed(0)
    fused = EmbeddingBagCollection(tables=tables(), optimizer=FusedOptimizer(optimizer, lr=0.3, eps=1e-3)).double()
    plain = EmbeddingBagCollection(tables=tables()).double()
    plain.load_state_dict(fused.state_dict())
    features = kjt()
    weighting = torch.randn(5, sum(fused.embedding_dims), dtype=torch.float64)
    (fused(features).values() * weighting).sum().backward()
    (plain(features).values() * weighting).sum().backward()
    with torch.no_grad():
        for name, feature in plain.embedding_bags.items():
            w, g = feature.weight, feature.weight.grad
            if optimizer == "sgd":
                w -= 0.3 * g
            else:
                s = g.pow(2).mean(1)
                w -= 0.3 * g / (s.sqrt() + 1e-3).unsqueeze(1)
                torch.testing.assert_close(fused.optimizer_state_dict()[f"{name}.momentum1"], s)
    for key, value in fused.state_dict().items():
        torch.testing.assert_close(value, plain.state_dict()[key], rtol=1e-12, atol=1e-12, msg=key)
    state = fused.optimizer_state_dict()
    other = EmbeddingBagCollection(tables=tables(), optimizer=FusedOptimizer(optimizer)).double()
    other.load_optimizer_state_dict(state)
    assert all(torch.equal(other.optimizer_state_dict()[k], v) for k, v in state.items())
    if optimizer == "rowwise_adagrad":
        with pytest.raises(ValueError, match="expected keys"):
            other.load_optimizer_state_dict({})


def test_dlrm_reads_the_collection_by_key():
    torch.manual_seed(0)
    model = DLRM.preset("kaggle", [20, 30, 40], representations=["table", "dhe", "hybrid"],
                        dhe=dict(k=16, m=97, decoder=(8,))).eval()
    assert model.feature_names == ["cat_0", "cat_1", "cat_2"]
    g = torch.Generator().manual_seed(1)
    dense = torch.rand(4, 13, generator=g)
    lengths = torch.randint(0, 3, (12,), generator=g)
    values = torch.randint(0, 20, (int(lengths.sum()),), generator=g)
    features = KeyedJaggedTensor(keys=model.feature_names, values=values, lengths=lengths)
    want = model(dense, values, features.offsets())
    torch.testing.assert_close(model(dense, features), want)
    # A collection whose output keys come back in another order (as a sharded one's may) gives the same model.
    collection = model.embeddings
    forward = collection.forward

    def reordered(kjt):
        out = forward(kjt)
        keys = out.keys()[::-1]
        return torchrec.KeyedTensor.from_tensor_list(keys, [out[k] for k in keys])

    collection.forward = reordered
    torch.testing.assert_close(model(dense, features), want)


@pytest.mark.parametrize("widths", [[4, 4, 4, 4], [4, 1, 4, 3]])
def test_keyed_values_reorders_vectors_and_their_gradients(widths):
    """A KeyedTensor's vectors in another key order (one gather where all are as wide, else per key): the same
    values and gradients as concatenating them by key, in float64."""
    from mprec.models.dlrm import keyed_values

    g = torch.Generator().manual_seed(len(set(widths)))
    keys = ["a", "b", "c", "d"]
    values = torch.randn(5, sum(widths), dtype=torch.float64, generator=g, requires_grad=True)
    keyed = torchrec.KeyedTensor(keys=keys, length_per_key=widths, values=values)
    order = ["c", "a", "d", "b"]
    got = keyed_values(keyed, order)
    columns = dict(zip(keys, values.split(widths, dim=1)))
    want = torch.cat([columns[k] for k in order], dim=1)
    assert torch.equal(got, want)
    assert keyed_values(keyed, keys) is values
    grad = torch.randn(want.shape, dtype=torch.float64, generator=g)
    assert torch.equal(torch.autograd.grad(got, values, grad)[0], torch.autograd.grad(want, values, grad)[0])


@pytest.mark.parametrize("widths", [[4, 4, 4, 4], [4, 8, 4, 12], [4, 3, 5, 4]])
def test_keyed_interaction_reads_vectors_in_place(widths):
    """The interaction of a KeyedTensor's vectors in another key order (keys one or several vectors wide, as a
    hybrid feature's two): the same values and gradients as interacting the vectors concatenated by key, in
    float64, with no reordering copy where every key is whole vectors (else by that copy)."""
    from mprec.models.dlrm import keyed_interaction, keyed_values, vector_order

    g = torch.Generator().manual_seed(sum(widths))
    keys = ["a", "b", "c", "d"]
    values = torch.randn(5, sum(widths), dtype=torch.float64, generator=g, requires_grad=True)
    dense = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    keyed = torchrec.KeyedTensor(keys=keys, length_per_key=widths, values=values)
    order = ["c", "a", "d", "b"]
    got = keyed_interaction(dense, keyed, order, 8)
    want = dlrm_interaction(dense, keyed_values(keyed, order), 8)
    assert torch.equal(got, want)
    grad = torch.randn(want.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(got, (dense, values), grad), torch.autograd.grad(want, (dense, values), grad)):
        assert torch.equal(a, b)
    whole = all(w % 4 == 0 for w in widths)
    reads = got.grad_fn.next_functions[1][0]  # what the interaction's sparse input came from
    assert (type(reads).__name__ == "AccumulateGrad") == whole  # in place: the leaf itself, no copy between
    if widths == [4, 8, 4, 12]:  # vectors: a 0, b 1-2, c 3, d 4-6
        assert vector_order(keyed, order, 4) == [3, 0, 4, 5, 6, 1, 2]
    assert vector_order(keyed, keys, 4) is None


def test_mprec_works_without_torchrec():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torchrec', 'fbgemm_gpu'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import torch, mprec
from mprec.models import DLRM
from mprec.nn import EmbeddingBagCollection
c = EmbeddingBagCollection([10, 20], 4, representations=['table', 'dhe'], dhe=dict(k=8, m=97, decoder=(4,)))
print(tuple(c(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2, 3, 3])).shape))
import mprec.distributed.checkpoint  # needs only torch
try:
    from mprec.distributed import EmbeddingBagCollectionSharder
except ImportError as e:
    print('distributed:', e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "(2, 8)"
    assert lines[1] == ("distributed: mprec.distributed needs TorchRec: pip install 'mprec[torchrec]' && "
                        "pip install --no-deps torchrec==1.8.0")
