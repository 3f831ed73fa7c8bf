"""``EmbeddingBagCollectionSharder``: TorchRec's ``ModuleSharder`` for :class:`mprec.nn.EmbeddingBagCollection`.

Given to ``DistributedModelParallel(model, sharders=[EmbeddingBagCollectionSharder(...)])``, it lets TorchRec's
planner (or a hand-made plan, written with ``torchrec.distributed.sharding_plan``'s helpers) place the
collection's tables table-wise, row-wise, column-wise, table-column-wise or data-parallel; the shards are
then pooled and trained by mprec's kernels (:mod:`mprec.distributed._torchrec`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torchrec.distributed.embedding_types import BaseEmbeddingSharder, EmbeddingComputeKernel
from torchrec.distributed.types import ShardingType

from ..nn.collection import EmbeddingBagCollection
from ._torchrec import SUPPORTED_OPTIMIZERS, ShardedEmbeddingBagCollection

__all__ = ["EmbeddingBagCollectionSharder", "SHARDING_TYPES"]

#: The sharding types mprec's kernels run (on CPU with gloo as on GPUs).
SHARDING_TYPES = (ShardingType.DATA_PARALLEL.value, ShardingType.TABLE_WISE.value, ShardingType.COLUMN_WISE.value,
                  ShardingType.TABLE_COLUMN_WISE.value, ShardingType.ROW_WISE.value)


class EmbeddingBagCollectionSharder(BaseEmbeddingSharder[EmbeddingBagCollection]):
    """Shards :class:`mprec.nn.EmbeddingBagCollection` with TorchRec; mprec's kernels pool each rank's shards.

    Args:
        fused_params: the fused table optimizer, as TorchRec takes it: ``{"optimizer": EmbOptimType.EXACT_SGD |
            EXACT_ROWWISE_ADAGRAD, "learning_rate": ..., "eps": ...}``. Without one, a collection built with
            a :class:`mprec.nn.FusedOptimizer` keeps its own; otherwise FBGEMM's default (exact SGD, 0.01).
        qcomm_codecs_registry: TorchRec's quantized communication codecs (passed through).

    Compute kernels: ``"fused"`` (the optimizer runs in the backward; TorchRec's default for its planner) and
    ``"dense"`` (an ordinary table gradient; data-parallel tables always).
    """

    def __init__(self, fused_params: Optional[Dict[str, Any]] = None, qcomm_codecs_registry=None) -> None:
        super().__init__(fused_params=fused_params, qcomm_codecs_registry=qcomm_codecs_registry)

    def shard(self, module: EmbeddingBagCollection, params, env, device: Optional[torch.device] = None,
              module_fqn: Optional[str] = None) -> ShardedEmbeddingBagCollection:
        return ShardedEmbeddingBagCollection(module, params, env, self._fused_params_for(module), device,
                                             self.qcomm_codecs_registry, module_fqn)

    def _fused_params_for(self, module: EmbeddingBagCollection) -> Dict[str, Any]:
        params = dict(self.fused_params or {})
        if "optimizer" not in params and module.optimizer is not None:
            by_name = {name: kind for kind, name in SUPPORTED_OPTIMIZERS.items()}
            params.update(optimizer=by_name[module.optimizer.name], learning_rate=module.optimizer.lr,
                          eps=module.optimizer.eps)
        return params

    def shardable_parameters(self, module: EmbeddingBagCollection) -> Dict[str, nn.Parameter]:
        return {name: feature.weight for name, feature in module.embedding_bags.items() if feature.table_dim}

    @property
    def module_type(self):
        return EmbeddingBagCollection

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return list(SHARDING_TYPES)

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> List[str]:
        if sharding_type == ShardingType.DATA_PARALLEL.value:
            return [EmbeddingComputeKernel.DENSE.value]
        return [EmbeddingComputeKernel.FUSED.value, EmbeddingComputeKernel.DENSE.value]
