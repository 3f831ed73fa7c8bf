"""mprec.models.DLRM against a DLRM written with torch.nn.EmbeddingBag and an explicit pairwise
interaction (float64); presets; mixed representations; fused table optimizers against autograd plus the
optimizer's formula."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mprec.data import SyntheticCriteo
from mprec.models import DLRM, PRESETS
from mprec.nn import FusedOptimizer

SIZES = [30, 7, 100, 1, 55]


def reference_forward(model, dense, sparse):
    """The DLRM computation spelled out: torch EmbeddingBags, a double loop of dot products."""
    x = model.bottom(dense)
    embeddings = [nn.functional.embedding(sparse[:, t], w) for t, w in enumerate(model.embeddings.table_parameters())]
    if model.interaction == "cat":
        z = torch.cat([x] + embeddings, dim=1)
    else:
        features = [x] + embeddings
        pairs = [(features[i] * features[j]).sum(1, keepdim=True) for i in range(len(features)) for j in range(i)]
        z = torch.cat([x] + pairs, dim=1)
    # The model's top layer takes the interaction zero-padded to an aligned width.
    z = F.pad(z, (0, model.top[0].in_features - z.shape[1]))
    return model.top(z).squeeze(1)


def batch(sizes=SIZES, n=64, seed=0):
    return SyntheticCriteo(1, n, sizes, seed=seed).batch(0)


@pytest.mark.parametrize("interaction", ["dot", "cat"])
@pytest.mark.parametrize("preset", ["kaggle", "terabyte"])
def test_forward_matches_reference(interaction, preset):
    torch.manual_seed(0)
    model = DLRM.preset(preset, SIZES, interaction=interaction).double()
    b = batch()
    got = model(b.dense.double(), b.indices, b.offsets)
    want = reference_forward(model, b.dense.double(), b.sparse())
    assert got.shape == (64,)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    dim = PRESETS[preset]["embedding_dim"]
    features = len(SIZES) + 1
    width = dim + (features * (features - 1) // 2 if interaction == "dot" else len(SIZES) * dim)
    if interaction == "dot":  # padded to a multiple of 8, the padding's weights zero
        padded = (width + 7) // 8 * 8
        assert model.top[0].in_features == padded and padded > width
        assert torch.count_nonzero(model.top[0].weight[:, width:]) == 0
        assert torch.count_nonzero(model.top[0].weight[:, :width]) == model.top[0].weight[:, :width].numel()
    else:
        assert model.top[0].in_features == width


def test_mixed_representations_train_and_keep_widths():
    torch.manual_seed(1)
    reps = ["table", "dhe", "hybrid", "table", "dhe"]
    model = DLRM.preset("kaggle", SIZES, representations=reps, dhe=dict(k=32, m=1009, decoder=(16,)))
    b = batch()
    out = model(b.dense, b.indices, b.offsets)
    loss = F.binary_cross_entropy_with_logits(out, b.labels)
    loss.backward()
    assert model.embeddings.features()[1].dhe.layers[0].weight.grad is not None
    assert model.representations == reps
    probs = model.predict(b.dense, b.indices, b.offsets)
    assert ((probs > 0) & (probs < 1)).all()


@pytest.mark.parametrize("interaction", ["dot", "cat"])
@pytest.mark.parametrize("form", ["two", "split"])
def test_hybrid_features_give_the_interaction_their_vectors(interaction, form):
    """A hybrid feature's table vector and DHE vector are two features of the interaction (the MP-Rec artifact's
    hybrid, the default), or one vector of half table and half DHE columns (the split form)."""
    torch.manual_seed(2)
    reps = ["table", "hybrid", "dhe", "hybrid", "table"]
    model = DLRM.preset("kaggle", SIZES, representations=reps, dhe=dict(k=32, m=1009, decoder=(16,)),
                        interaction=interaction, hybrid_form=form).double()
    dim = model.embedding_dim
    b = batch()
    dense, sparse = b.dense.double(), b.sparse()
    x = model.bottom(dense)
    vectors = []
    for t, feature in enumerate(model.embeddings.features()):
        ids, offsets = sparse[:, t], torch.arange(sparse.shape[0])
        table = nn.functional.embedding(ids, feature.weight) if feature.table_dim else None
        dhe = feature.dhe(ids, offsets) if feature.dhe is not None else None
        if table is not None and dhe is not None:
            assert (table.shape[1], dhe.shape[1]) == ((dim, dim) if form == "two" else (dim // 2, dim // 2))
            vectors += [table, dhe] if form == "two" else [torch.cat([table, dhe], 1)]
        else:
            vectors.append(table if table is not None else dhe)
    assert model.num_vectors == len(vectors) == (7 if form == "two" else 5)
    features = [x] + vectors
    if interaction == "cat":
        z = torch.cat(features, dim=1)
    else:
        pairs = [(features[i] * features[j]).sum(1, keepdim=True) for i in range(len(features)) for j in range(i)]
        z = torch.cat([x] + pairs, dim=1)
    want = model.top(F.pad(z, (0, model.top[0].in_features - z.shape[1]))).squeeze(1)
    torch.testing.assert_close(model(dense, b.indices, b.offsets), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="hybrid_dhe_dim divides a hybrid's width in hybrid_form='split'"):
        DLRM.preset("kaggle", SIZES, representations=reps, hybrid_dhe_dim=4)


def test_argument_errors():
    with pytest.raises(ValueError, match="interaction must be one of"):
        DLRM(SIZES, interaction="mlp")
    with pytest.raises(ValueError, match="bottom MLP must end in embedding_dim"):
        DLRM(SIZES, embedding_dim=8, bottom=(16,))
    with pytest.raises(ValueError, match="top must end in 1"):
        DLRM(SIZES, top=(4,))
    with pytest.raises(ValueError, match="unknown preset 'criteo'"):
        DLRM.preset("criteo", SIZES)


def _pair(optimizer):
    torch.manual_seed(3)
    fused = DLRM.preset("kaggle", SIZES, optimizer=FusedOptimizer(optimizer, lr=0.2)).double()
    plain = DLRM.preset("kaggle", SIZES).double()
    plain.load_state_dict(fused.state_dict(), strict=False)
    return fused, plain


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_fused_table_optimizer_equals_autograd_then_step(optimizer):
    fused, plain = _pair(optimizer)
    assert len(fused.dense_parameters()) == len(list(fused.parameters())) - len(SIZES)
    dense_opt = torch.optim.SGD(fused.dense_parameters(), lr=0.2)
    plain_opt = torch.optim.SGD(plain.dense_parameters(), lr=0.2)  # every parameter, tables included
    tables = plain.embeddings.table_parameters()
    plain_tables_opt_state = [torch.zeros(w.shape[0], dtype=torch.float64) for w in tables]
    for step in range(3):
        b = batch(seed=step)
        for model, opt in ((fused, dense_opt), (plain, plain_opt)):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(model(b.dense.double(), b.indices, b.offsets), b.labels.double()).backward()
        assert all(w.grad is None for w in fused.embeddings.table_parameters())  # no table gradient was built
        if optimizer == "rowwise_adagrad":
            with torch.no_grad():  # the formula, on the dense gradient; SGD must not touch the tables
                for w, s in zip(tables, plain_tables_opt_state):
                    s += w.grad.pow(2).mean(1)
                    w -= 0.2 * w.grad / (s.sqrt() + 1e-8).unsqueeze(1)
                    w.grad = None
        dense_opt.step()
        plain_opt.step()
    assert list(fused.state_dict()) == list(plain.state_dict())
    for (name, a), b in zip(fused.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    state = fused.embeddings.optimizer_state_dict()
    if optimizer == "rowwise_adagrad":
        assert list(state) == [f"cat_{t}.momentum1" for t in range(len(SIZES))]
        for s, want in zip(state.values(), plain_tables_opt_state):
            torch.testing.assert_close(s, want, rtol=1e-10, atol=1e-14)
    else:
        assert state == {}


@pytest.mark.parametrize("tables", ["fused-rowwise_adagrad", "sparse", "dense"])
def test_compiled_model_trains_and_predicts_as_eager(tables):
    """torch.compile(fullgraph=True, dynamic=True) of the float32 model, three batch sizes through one compiled
    function: the tables, the interaction and the MLPs' products (mprec::mlp_product) stay mprec's ops, traced
    through their fake kernels and autograd, and a fused table optimizer updates the tables inside the compiled
    backward. Parameters, gradients, optimizer state and predictions equal eager's, up to summation order."""
    import copy

    torch.manual_seed(0)
    kwargs = ({"optimizer": FusedOptimizer(tables.removeprefix("fused-"), 0.2)} if tables.startswith("fused")
              else {"sparse": tables == "sparse"})
    eager = DLRM(SIZES, embedding_dim=8, bottom=(32, 8), top=(16, 1), **kwargs)
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    table_ids = {id(w) for w in eager.embeddings.table_parameters()}
    close = dict(rtol=1e-4, atol=1e-5)
    for step, n in enumerate((64, 100, 37)):
        b = batch(n=n, seed=step)
        for m, f in ((eager, eager), (model, compiled)):
            m.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(f(b.dense, b.indices, b.offsets), b.labels).backward()
        for (name, a), c in zip(eager.named_parameters(), model.parameters()):
            torch.testing.assert_close(c, a, **close, msg=name)
            if a.grad is None:
                assert c.grad is None, name
            else:
                assert c.grad.is_sparse == a.grad.is_sparse == (tables == "sparse" and id(a) in table_ids), name
                torch.testing.assert_close(c.grad.to_dense(), a.grad.to_dense(), **close, msg=name)
    for a, c in zip(eager.embeddings.optimizer_state_dict().values(),
                    model.embeddings.optimizer_state_dict().values()):
        torch.testing.assert_close(c, a, **close)
    with torch.no_grad():
        b = batch(n=21, seed=9)
        torch.testing.assert_close(compiled(b.dense, b.indices, b.offsets), eager(b.dense, b.indices, b.offsets),
                                   **close)


def test_fused_optimizer_not_applied_in_eval_or_no_grad():
    fused, _ = _pair("sgd")
    before = [w.clone() for w in fused.embeddings.table_parameters()]
    b = batch()
    with torch.no_grad():
        fused(b.dense.double(), b.indices, b.offsets)
    assert all(torch.equal(a, w) for a, w in zip(before, fused.embeddings.table_parameters()))
    with pytest.raises(ValueError, match="name must be one of"):
        FusedOptimizer("adam")


@pytest.mark.parametrize("interaction", ["dot", "cat"])
def test_train_wrapper_traces_to_one_collection_call_on_the_batch(interaction):
    """TorchRec's train pipelines find the collection's input by tracing the model with torch.fx, with the
    modules free of sharded ones as leaves: the trace must succeed and call the collection on
    ``batch.sparse_features`` itself (no transformation in between), once."""
    from mprec.models import DLRMTrain

    model = DLRMTrain(DLRM(SIZES, embedding_dim=8, bottom=(16, 8), top=(16, 1), interaction=interaction,
                           representations=["table", "dhe", "hybrid", "table", "dhe"], dhe=dict(k=8, m=31, decoder=(8,))))
    leaves = {"model.embeddings", "model.bottom", "model.top"}

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, module, name):
            return name in leaves

    graph = Tracer().trace(model)
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == "model.embeddings"]
    assert len(calls) == 1
    (arg,) = calls[0].args
    assert arg.op == "call_function" and arg.args[1] == "sparse_features" and arg.args[0].op == "placeholder"


def test_train_wrapper_returns_the_models_loss():
    """``DLRMTrain(model)(batch)`` is ``(loss, (loss, logits, labels))`` with the loss of the model's logits."""
    torchrec = pytest.importorskip("torchrec")
    from torchrec.datasets.utils import Batch

    from mprec.models import DLRMTrain

    torch.manual_seed(0)
    model = DLRM(SIZES, embedding_dim=8, bottom=(16, 8), top=(16, 1))
    b = SyntheticCriteo(1, 6, SIZES, seed=1).batch(0)
    kjt = torchrec.KeyedJaggedTensor(keys=model.feature_names, values=b.indices, offsets=b.offsets)
    loss, (detached, logits, labels) = DLRMTrain(model)(Batch(dense_features=b.dense, sparse_features=kjt,
                                                              labels=b.labels))
    want = F.binary_cross_entropy_with_logits(model(b.dense, b.indices, b.offsets), b.labels)
    torch.testing.assert_close(loss, want)
    assert loss.requires_grad and not detached.requires_grad and not logits.requires_grad
    torch.testing.assert_close(logits, model(b.dense, b.indices, b.offsets).detach())
    assert torch.equal(labels, b.labels)
