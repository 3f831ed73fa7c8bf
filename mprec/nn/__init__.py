"""Drop-in layers built on the mprec ops."""

from . import cache, functional
from .cache import EmbeddingCache
from .collection import REPRESENTATIONS, EmbeddingBagCollection
from .dhe import DHEEmbeddingBag, HybridEmbeddingBag
from .embedding_bag import EmbeddingBag
from .features import HYBRID_FORMS, DHEFeature, HybridFeature, TableFeature
from .mlp import MLP
from .pooling import FusedOptimizer

__all__ = ["cache", "functional", "EmbeddingBag", "EmbeddingBagCollection", "DHEEmbeddingBag", "HybridEmbeddingBag",
           "TableFeature", "DHEFeature", "HybridFeature", "EmbeddingCache", "FusedOptimizer", "MLP", "REPRESENTATIONS",
           "HYBRID_FORMS"]
