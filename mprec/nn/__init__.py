"""Drop-in layers built on the mprec ops."""

from . import cache, functional
from .cache import EmbeddingCache
from .dhe import DHEEmbeddingBag, HybridEmbeddingBag
from .embedding_bag import EmbeddingBag, EmbeddingBagCollection, FusedOptimizer
from .mlp import MLP

__all__ = ["cache", "functional", "EmbeddingBag", "EmbeddingBagCollection", "DHEEmbeddingBag", "HybridEmbeddingBag",
           "EmbeddingCache", "FusedOptimizer", "MLP"]
