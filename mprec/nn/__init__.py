"""Drop-in layers built on the mprec ops."""

from . import functional
from .embedding_bag import EmbeddingBag, EmbeddingBagCollection

__all__ = ["functional", "EmbeddingBag", "EmbeddingBagCollection"]
