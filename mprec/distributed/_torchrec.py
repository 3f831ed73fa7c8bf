"""Where mprec plugs into TorchRec's sharded embedding-bag collection: written against torchrec 1.8.0.

TorchRec's ``ShardedEmbeddingBagCollection`` does the distribution (input all-to-alls, output all-to-alls
or reduce-scatters, ShardedTensor state dicts, the data-parallel wrapping of replicated tables). Each rank
pools its shards with a *lookup* whose *kernels* own the local tables; TorchRec's kernels call FBGEMM.
This module replaces the kernels with mprec's (:class:`TableBatchedEmbeddingBags`: one flat buffer per
group of tables, pooled by ``mprec::batched_embedding_bag``, trained by ``mprec::batched_embedding_bag_update``
in the backward) and adds what mprec's collection has beyond tables: DHE parts, replicated and computed on
each rank's own batch.

Everything here that leans on TorchRec's internals (private methods and attributes it may rename) is listed in
:data:`TORCHREC_METHODS` and :data:`TORCHREC_ATTRIBUTES`; ``tests/test_distributed.py`` checks that each still
exists and has the shape used here, so an upgrade that moves them fails there, loudly, before anything runs
wrongly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

import torchrec
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec.distributed.batched_embedding_kernel import (BaseBatchedEmbeddingBag, EmbeddingFusedOptimizer,
                                                           _gen_named_parameters_by_table_dense)
from torchrec.distributed.composable.table_batched_embedding_slice import TableBatchedEmbeddingSlice
from torchrec.distributed.embedding_lookup import GroupedPooledEmbeddingsLookup
from torchrec.distributed.embedding_types import EmbeddingComputeKernel, GroupedEmbeddingConfig
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionContext
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection as _TorchRecShardedEBC
from torchrec.distributed.sharding.dp_sharding import DpPooledEmbeddingSharding
from torchrec.distributed.sharding.rw_sharding import RwPooledEmbeddingSharding
from torchrec.distributed.types import ShardingType
from torchrec.distributed.utils import append_prefix
from torchrec.modules.embedding_configs import data_type_to_dtype
from torchrec.optim.fused import EmptyFusedOptimizer, FusedOptimizerModule
from torchrec.sparse.jagged_tensor import KeyedTensor
from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode

from .. import memory
from ..nn.collection import EmbeddingBagCollection
from ..nn.pooling import FusedOptimizer, pool_tables
from ..ops.embedding_bag import _BATCHED_EMBEDDING_BAG

__all__ = ["TORCHREC_VERSION", "TORCHREC_METHODS", "TORCHREC_ATTRIBUTES", "TableBatchedEmbeddingBags",
           "ShardedEmbeddingBagCollection", "fused_optimizer_of", "SUPPORTED_OPTIMIZERS"]

#: The TorchRec release this module is written against.
TORCHREC_VERSION = "1.8.0"
if torchrec.__version__.split("+")[0] != TORCHREC_VERSION:
    import warnings

    warnings.warn(f"mprec.distributed is written against torchrec {TORCHREC_VERSION}; this is torchrec "
                  f"{torchrec.__version__}: tests/test_distributed.py checks the internals it relies on", stacklevel=2)

#: TorchRec's private methods this module overrides or calls, by class.
TORCHREC_METHODS = [
    (_TorchRecShardedEBC, "_create_lookups"),
    (_TorchRecShardedEBC, "input_dist"),
    (_TorchRecShardedEBC, "output_dist"),
    (_TorchRecShardedEBC, "compute_and_output_dist"),
    (_TorchRecShardedEBC, "create_context"),
    (GroupedPooledEmbeddingsLookup, "_create_embedding_kernel"),
]
#: TorchRec's private attributes (set by its constructors) this module reads, by class.
TORCHREC_ATTRIBUTES = [
    (_TorchRecShardedEBC, "_embedding_shardings"),
    (_TorchRecShardedEBC, "_lookups"),
    (_TorchRecShardedEBC, "_env"),
    (_TorchRecShardedEBC, "_device"),
    (GroupedPooledEmbeddingsLookup, "_emb_modules"),
    (BaseBatchedEmbeddingBag, "_local_rows"),
    (BaseBatchedEmbeddingBag, "_local_cols"),
    (BaseBatchedEmbeddingBag, "_feature_table_map"),
    (BaseBatchedEmbeddingBag, "_pooling"),
    (BaseBatchedEmbeddingBag, "_config"),
    (BaseBatchedEmbeddingBag, "_pg"),
    (BaseBatchedEmbeddingBag, "table_name_to_count"),
    (RwPooledEmbeddingSharding, "_grouped_embedding_configs"),
    (RwPooledEmbeddingSharding, "_pg"),
    (DpPooledEmbeddingSharding, "_grouped_embedding_configs"),
]

#: TorchRec's fused optimizers that mprec's kernels run, by the name :class:`mprec.nn.FusedOptimizer` uses.
SUPPORTED_OPTIMIZERS = {EmbOptimType.EXACT_SGD: "sgd", EmbOptimType.EXACT_ROWWISE_ADAGRAD: "rowwise_adagrad"}
# fused_params keys that tune FBGEMM's own kernels (caches, precision of its cache, prefetching): they
# have no counterpart in mprec's kernels, which keep the tables in host memory, and change no result.
_IGNORED_FUSED_PARAMS = {"cache_precision", "cache_algorithm", "cache_load_factor", "cache_reserved_memory",
                         "prefetch_pipeline", "stochastic_rounding", "enable_raw_embedding_streaming",
                         "bounds_check_mode", "gradient_clipping", "max_gradient"}
_MODES = {PoolingMode.SUM: 0, PoolingMode.MEAN: 1}


def fused_optimizer_of(fused_params: Optional[Dict[str, Any]], where: str) -> FusedOptimizer:
    """The :class:`FusedOptimizer` a kernel runs, from TorchRec's ``fused_params`` (FBGEMM's defaults:
    exact SGD, learning rate 0.01, eps 1e-8)."""
    params = dict(fused_params or {})
    kind = params.pop("optimizer", EmbOptimType.EXACT_SGD)
    if kind not in SUPPORTED_OPTIMIZERS:
        supported = " or ".join(f"EmbOptimType.{k.name}" for k in SUPPORTED_OPTIMIZERS)
        raise ValueError(f"mprec sharded kernels ({where}): fused optimizer {getattr(kind, 'name', kind)} is not "
                         f"supported; use {supported}")
    lr = float(params.pop("learning_rate", 0.01))
    eps = float(params.pop("eps", 1e-8))
    if float(params.pop("weight_decay", 0.0)) != 0.0:
        raise ValueError(f"mprec sharded kernels ({where}): weight_decay is not supported by the fused optimizers")
    output_dtype = params.pop("output_dtype", None)
    if output_dtype is not None and str(getattr(output_dtype, "name", output_dtype)).upper() not in ("FP32", "FLOAT"):
        raise ValueError(f"mprec sharded kernels ({where}): output_dtype {output_dtype} is not supported (FP32 only)")
    unknown = sorted(k for k in params if k not in _IGNORED_FUSED_PARAMS)
    if unknown:
        raise ValueError(f"mprec sharded kernels ({where}): fused_params {unknown} are not supported")
    return FusedOptimizer(SUPPORTED_OPTIMIZERS[kind], lr=lr, eps=eps)


# --- the kernel --------------------------------------------------------------------------------------------

class TableBatchedEmbeddingBags(nn.Module):
    """mprec's counterpart of FBGEMM's table-batched embedding bags, for TorchRec's kernels: the tables of a
    group in one flat buffer (on 2 MiB pages where the machine offers them), pooled in one
    ``mprec::batched_embedding_bag`` call.

    ``optimizer`` set: the backward updates the looked-up rows in place (no table gradient exists);
    ``None``: the flat buffer ``weights`` is a parameter whose gradient the backward fills (TorchRec's
    dense kernel, and data-parallel tables). ``feature_table_map`` gives each input feature's table.
    """

    def __init__(self, rows: List[int], cols: List[int], feature_table_map: List[int], mode: int,
                 dtype: torch.dtype, device: Optional[torch.device], optimizer: Optional[FusedOptimizer]) -> None:
        super().__init__()
        self.embedding_specs = list(zip(rows, cols))
        self.feature_table_map = list(feature_table_map)
        self.mode, self.optimizer = mode, optimizer
        sizes = [r * c for r, c in self.embedding_specs]
        self.weights_physical_offsets = [sum(sizes[:t]) for t in range(len(sizes))]
        self.weights = nn.Parameter(memory.empty((sum(sizes),), dtype=dtype, device=device))
        # Row-wise Adagrad's accumulators, one per table (none for SGD).
        self._states = [optimizer.new_state(w) for w in self.split_embedding_weights()] \
            if optimizer is not None and optimizer.name == "rowwise_adagrad" else []

    def split_embedding_weights(self, detach: bool = True) -> List[Tensor]:
        """Each table as a ``[rows, cols]`` view of the flat buffer."""
        flat = self.weights.detach() if detach else self.weights
        return [flat[o:o + r * c].view(r, c) for o, (r, c) in zip(self.weights_physical_offsets, self.embedding_specs)]

    def forward(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor] = None) -> Tensor:
        offsets = offsets.to(indices.dtype)
        if self.optimizer is not None:
            # The views carry autograd to the fused update, which writes the tables in place (mprec.nn.pooling).
            tables = self.tables_by_feature(detach=False)
            states = [self._states[t] for t in self.feature_table_map] if self._states else []
            return pool_tables(tables, indices, offsets, self.mode, per_sample_weights, (), self.optimizer, states)
        return _DensePooling.apply(self, indices, offsets, per_sample_weights, self.weights)

    def tables_by_feature(self, detach: bool = True) -> List[Tensor]:
        """The table of each input feature (a table that serves several features, the same view each time)."""
        tables = self.split_embedding_weights(detach)
        return [tables[t] for t in self.feature_table_map]

    # FBGEMM's optimizer interface, which TorchRec's EmbeddingFusedOptimizer drives.
    def get_optimizer_state(self) -> List[Dict[str, Tensor]]:
        if not self._states:
            return [{} for _ in self.embedding_specs]
        return [{"sum": s} for s in self._states]

    def get_learning_rate(self) -> float:
        return self.optimizer.lr if self.optimizer else 0.0

    def set_learning_rate(self, lr: float) -> None:
        if self.optimizer is not None:
            self.optimizer.lr = float(lr)

    def set_optimizer_step(self, step: int) -> None:
        pass  # the supported optimizers do not depend on the step

    def update_hyper_parameters(self, params: Dict[str, float]) -> None:
        for key, value in params.items():
            if key in ("lr", "learning_rate"):
                self.set_learning_rate(value)
            elif key == "eps" and self.optimizer is not None:
                self.optimizer.eps = float(value)
            else:
                raise ValueError(f"mprec sharded kernels: hyper-parameter {key!r} is not one of lr, eps")

    def flush(self) -> None:
        pass

    def reset_cache_states(self) -> None:
        pass


class _DensePooling(torch.autograd.Function):
    """Pools; the backward writes the gradient of the flat buffer in one allocation (each table's rows are
    scattered into its slice), and the per-sample weights' gradient when they need one."""

    @staticmethod
    def forward(ctx, tbe, indices, offsets, per_sample_weights, weights):
        tables = tbe.tables_by_feature()
        out, _ = _BATCHED_EMBEDDING_BAG(tables, indices, offsets, tbe.mode, per_sample_weights, [], None, False,
                                        False)
        ctx.tbe, ctx.tables = tbe, tables
        ctx.save_for_backward(indices, offsets, per_sample_weights)
        return out

    @staticmethod
    def backward(ctx, grad):
        indices, offsets, psw = ctx.saved_tensors
        tbe, tables, grad = ctx.tbe, ctx.tables, grad.contiguous()
        grad_weights = grad_psw = None
        if ctx.needs_input_grad[4]:
            rows, values = torch.ops.mprec.batched_embedding_bag_sparse_backward(grad, tables, indices, offsets,
                                                                                 tbe.mode, psw, [])
            flat = torch.zeros_like(tbe.weights)
            slices = [flat[o:o + r * c].view(r, c) for o, (r, c) in zip(tbe.weights_physical_offsets,
                                                                         tbe.embedding_specs)]
            for t, r, v in zip(tbe.feature_table_map, rows, values):
                slices[t].index_add_(0, r, v.to(flat.dtype))
            grad_weights = flat
        if psw is not None and ctx.needs_input_grad[3]:
            grad_psw = torch.ops.mprec.batched_embedding_bag_per_sample_weights_backward(
                grad, tables, indices, offsets, tbe.mode, []).to(psw.dtype)
        return None, None, None, grad_psw, grad_weights


def _tbe_of(kernel: BaseBatchedEmbeddingBag, config: GroupedEmbeddingConfig, device,
            optimizer: Optional[FusedOptimizer]) -> TableBatchedEmbeddingBags:
    if kernel._pooling not in _MODES:
        raise ValueError(f"mprec sharded kernels: pooling {kernel._pooling} is not supported (sum or mean)")
    return TableBatchedEmbeddingBags(kernel._local_rows, kernel._local_cols, kernel._feature_table_map,
                                     _MODES[kernel._pooling], data_type_to_dtype(config.data_type), device, optimizer)


class MprecFusedEmbeddingBag(BaseBatchedEmbeddingBag, FusedOptimizerModule):
    """TorchRec's fused kernel (``compute_kernel="fused"``) on mprec's ops: the optimizer runs in the
    backward; its state is a TorchRec ``KeyedOptimizer`` (``fused_optimizer``), so checkpoints carry it."""

    def __init__(self, config: GroupedEmbeddingConfig, pg=None, device=None, sharding_type=None) -> None:
        super().__init__(config, pg, device, sharding_type)
        optimizer = fused_optimizer_of(config.fused_params, f"tables {config.table_names()}")
        self._emb_module = _tbe_of(self, config, device, optimizer)
        # TorchRec's own fused optimizer, driving mprec's kernel through FBGEMM's optimizer interface.
        self._optim = EmbeddingFusedOptimizer(config, self._emb_module, pg)
        self.init_parameters()

    @property
    def emb_module(self) -> TableBatchedEmbeddingBags:
        return self._emb_module

    @property
    def fused_optimizer(self):
        return self._optim

    @property
    def _param_per_table(self) -> Dict[str, TableBatchedEmbeddingSlice]:
        tbe = self._emb_module
        weights_by_table, states = tbe.split_embedding_weights(), tbe.get_optimizer_state()
        result, counts = {}, dict(self.table_name_to_count)
        for t, table in enumerate(self._config.embedding_tables):
            if table.name not in counts:
                continue
            count = counts.pop(table.name)  # column-wise shards of one table on this rank sit side by side
            rows, cols = tbe.embedding_specs[t]
            start = tbe.weights_physical_offsets[t]
            weight = TableBatchedEmbeddingSlice(data=tbe.weights, start_offset=start,
                                                end_offset=start + count * rows * cols, num_embeddings=-1,
                                                embedding_dim=cols)
            weight._in_backward_optimizers = [EmbeddingFusedOptimizer(
                config=self._config, emb_module=tbe, pg=self._pg, create_for_table=table.name,
                param_weight_for_table=weight, embedding_weights_by_table=weights_by_table,
                all_optimizer_states=states)]
            result[table.name] = weight
        return result

    @_param_per_table.setter
    def _param_per_table(self, value) -> None:
        self.__dict__["_param_per_table"] = value

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        yield from ()

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[Tuple[str, nn.Parameter]]:
        # The tables are trained in the backward: to torch.optim and DDP they are parameters to leave alone.
        for name, tensor in self.named_split_embedding_weights(prefix, recurse, remove_duplicate):
            param = nn.Parameter(tensor)
            param._in_backward_optimizers = [EmptyFusedOptimizer()]
            yield name, param


class MprecDenseEmbeddingBag(BaseBatchedEmbeddingBag):
    """TorchRec's dense kernel (``compute_kernel="dense"``, and every data-parallel table) on mprec's ops: the
    flat buffer of the group's tables is a parameter with an ordinary gradient."""

    def __init__(self, config: GroupedEmbeddingConfig, pg=None, device=None, sharding_type=None) -> None:
        super().__init__(config, pg, device, sharding_type)
        self._emb_module = _tbe_of(self, config, device, None)
        self._param_per_table = dict(_gen_named_parameters_by_table_dense(
            self._emb_module, self.table_name_to_count.copy(), self._config))
        self.init_parameters()

    @property
    def emb_module(self) -> TableBatchedEmbeddingBags:
        return self._emb_module

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        yield from ()

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[Tuple[str, nn.Parameter]]:
        combined = "/".join(table.name for table in self._config.embedding_tables)
        yield (f"{prefix}.{combined}.weight" if prefix else f"{combined}.weight"), self._emb_module.weights


class MprecPooledEmbeddingsLookup(GroupedPooledEmbeddingsLookup):
    """TorchRec's lookup of one sharding type, with mprec's kernels in place of FBGEMM's."""

    def _create_embedding_kernel(self, config: GroupedEmbeddingConfig, device, pg, sharding_type, env):
        if config.compute_kernel == EmbeddingComputeKernel.FUSED:
            return MprecFusedEmbeddingBag(config, pg, device, sharding_type)
        if config.compute_kernel == EmbeddingComputeKernel.DENSE:
            return MprecDenseEmbeddingBag(config, pg, device, sharding_type)
        raise ValueError(f"mprec sharded kernels: compute kernel {config.compute_kernel.value!r} of tables "
                         f"{config.table_names()} is not supported; plan them with 'fused' or 'dense'")


# --- the sharded collection --------------------------------------------------------------------------------

class _TableView:
    """mprec's collection as TorchRec's sharded collection reads an unsharded one: its table parts only (a
    hybrid's at the table's width), parameters ``embedding_bags.<table>.weight``."""

    def __init__(self, module: EmbeddingBagCollection) -> None:
        self._module = module
        self._configs = module.table_configs()
        self._params = OrderedDict((f"embedding_bags.{name}.weight", f.weight)
                                   for name, f in module.embedding_bags.items() if f.table_dim)

    def embedding_bag_configs(self):
        return self._configs

    def is_weighted(self) -> bool:
        return self._module.is_weighted()

    def named_parameters(self, *args, **kwargs):
        return iter(self._params.items())

    def state_dict(self, *args, **kwargs):
        return OrderedDict((k, v.detach()) for k, v in self._params.items())

    @property
    def device(self) -> torch.device:
        return self._module.device


@dataclass
class ShardedCollectionContext(EmbeddingBagCollectionContext):
    """TorchRec's context, plus this rank's own batch in the TBE layout for the DHE parts."""

    local_batch: Optional[Tuple[Tensor, Tensor, Optional[Tensor]]] = None


class ShardedEmbeddingBagCollection(_TorchRecShardedEBC):
    """mprec's :class:`~mprec.nn.EmbeddingBagCollection` sharded by TorchRec: TorchRec distributes the table
    parts (all-to-alls, reduce-scatters) and mprec's kernels pool each rank's shards; DHE parts are
    replicated (their parameters train data-parallel, under DistributedModelParallel's DDP) and decode each
    rank's own batch. Takes a KeyedJaggedTensor; returns an awaitable ``KeyedTensor`` with the unsharded
    collection's keys (in another order: read it by key) and its state dict keys."""

    def __init__(self, module: EmbeddingBagCollection, table_name_to_parameter_sharding, env, fused_params=None,
                 device: Optional[torch.device] = None, qcomm_codecs_registry=None,
                 module_fqn: Optional[str] = None) -> None:
        tables = [name for name, f in module.embedding_bags.items() if f.table_dim]
        planned = set(table_name_to_parameter_sharding)
        missing, unknown = [t for t in tables if t not in planned], sorted(planned - set(module.embedding_bags))
        if missing or unknown:
            raise ValueError(f"mprec ShardedEmbeddingBagCollection{' ' + module_fqn if module_fqn else ''}: the plan "
                             f"does not match the collection's tables {tables}"
                             + (f"; no sharding for {missing}" if missing else "")
                             + (f"; it names tables the collection does not have: {unknown}" if unknown else ""))
        not_tables = sorted(planned - set(tables) - set(unknown))
        if not_tables:
            raise ValueError(f"mprec ShardedEmbeddingBagCollection: the plan shards {not_tables}, which are DHE "
                             "features (no table): they are replicated, leave them out of the plan")
        plan = {t: table_name_to_parameter_sharding[t] for t in tables}
        super().__init__(_TableView(module), plan, env, fused_params, device, qcomm_codecs_registry, module_fqn)
        # The collection's own modules, each table part now holding this rank's shards (TorchRec registered
        # them on placeholder modules of the same names): the forward completes each feature with them.
        for name, feature in module.embedding_bags.items():
            if feature.table_dim:
                feature.weight = self.embedding_bags[name].weight
        self.embedding_bags = module.embedding_bags
        self.__dict__["_collection"] = module  # not a submodule: its modules are registered here already
        self._needs_local_batch = any(f.table_dim < f.embedding_dim for f in module.features())
        # Which table-part output key (TorchRec's naming over the table parts) holds each TBE entry.
        view_names = _embedding_names_by_entry(module.table_configs())
        self._table_keys = {e: view_names[(t, f)] for e, (t, f) in enumerate(
            zip(module._entry_tables, module._entry_features)) if module.embedding_bags[t].table_dim}

    def _create_lookups(self) -> None:
        for sharding in self._embedding_shardings:
            is_dp = isinstance(sharding, DpPooledEmbeddingSharding)
            self._lookups.append(MprecPooledEmbeddingsLookup(
                grouped_configs=sharding._grouped_embedding_configs,
                pg=self._env.process_group if is_dp else sharding._pg,
                device=self._device,
                # Data-parallel tables get whole gradients (DDP averages them); model-parallel ones are scaled
                # as TorchRec scales them.
                scale_weight_gradients=not is_dp,
                sharding_type=ShardingType.ROW_WISE if isinstance(sharding, RwPooledEmbeddingSharding) else None,
                env=self._env,
            ))

    def create_context(self) -> ShardedCollectionContext:
        return ShardedCollectionContext(sharding_contexts=[])

    def input_dist(self, ctx: ShardedCollectionContext, features):
        collection = self._collection
        if self._needs_local_batch:
            ctx.local_batch = collection.keyed_to_tbe(features)
        else:
            collection.check_keys(features.keys())
        return super().input_dist(ctx, features)

    def output_dist(self, ctx: ShardedCollectionContext, output):
        awaitable = super().output_dist(ctx, output)
        awaitable.callbacks.append(lambda keyed: self._complete(ctx, keyed))
        return awaitable

    def compute_and_output_dist(self, ctx: ShardedCollectionContext, input):
        awaitable = super().compute_and_output_dist(ctx, input)
        awaitable.callbacks.append(lambda keyed: self._complete(ctx, keyed))
        return awaitable

    def _complete(self, ctx: ShardedCollectionContext, keyed: KeyedTensor) -> KeyedTensor:
        """The collection's output from the table parts TorchRec returned and this rank's DHE parts. With tables
        only it is TorchRec's, keys in TorchRec's order (that of the ranks that pooled them): readers read by key,
        and reordering would cost a copy each way."""
        if not self._needs_local_batch:
            return keyed
        collection = self._collection
        by_key = keyed.to_dict()
        tables = {e: by_key[key] for e, key in self._table_keys.items()}
        parts = collection.complete(tables, *ctx.local_batch)
        return KeyedTensor(keys=collection.embedding_names, length_per_key=collection.embedding_dims,
                           values=torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def sharded_parameter_names(self, prefix: str = "") -> Iterator[str]:
        # The table parts only: DHE parameters are replicated, for DistributedModelParallel to wrap in DDP.
        for name, feature in self.embedding_bags.items():
            if feature.table_dim:
                yield append_prefix(prefix, f"embedding_bags.{name}.weight")

    @property
    def unsharded_module_type(self):
        return EmbeddingBagCollection


def _embedding_names_by_entry(configs) -> Dict[Tuple[str, str], str]:
    """TorchRec's output key of each (table, feature) pair of ``configs`` (``feature@table`` for a feature
    that several tables serve)."""
    from torchrec.modules.embedding_modules import get_embedding_names_by_table

    names = get_embedding_names_by_table(configs)
    return {(c.name, f): n for c, ns in zip(configs, names) for f, n in zip(c.feature_names, ns)}
