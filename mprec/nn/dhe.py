"""DHE and hybrid embedding layers: drop-ins for an ``EmbeddingBag`` that need no table.

A DHE feature hashes each id with ``k`` hash functions into a dense ``[k]`` encoding and decodes it with
an MLP (``k -> decoder... -> embedding_dim``). The first layer is fused with the hashing
(``mprec::dhe_encode_linear``: the ``[N, k]`` encoding never exists); the others are
``mprec::rowwise_linear``. Bags are pooled by decoding each distinct id of the batch once and running
``mprec::embedding_bag`` over those vectors, so a hot id costs one decode per batch, not one per lookup.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..ops.cache import unique_ids
from ..ops.dhe import ACTIVATIONS, TRANSFORMS, dhe_encode_aten, dhe_encode_linear, dhe_hash_aten, dhe_hash_parameters
from ..ops.dhe import activation as apply_activation
from ..ops.dhe import next_prime, rowwise_linear
from ..ops.embedding_bag import MODES
from ..precision import warn_if_bf16_emulated
from . import functional as F
from .cache import EmbeddingCache
from .embedding_bag import EmbeddingBag
from .padded import pool_slots

__all__ = ["DHEEmbeddingBag", "HybridEmbeddingBag", "hybrid_vectors"]

_CACHES = ("decoder", "encoder")


class DHEEmbeddingBag(nn.Module):
    """Deep hash embedding bag: ``forward(input, offsets=None, per_sample_weights=None)`` as
    :class:`torch.nn.EmbeddingBag`, with no table.

    Args:
        embedding_dim: output width ``D``.
        k: number of hash functions (encoding width).
        m: hash range; ``p`` is the smallest prime above it.
        decoder: hidden widths of the MLP; the last layer maps to ``D`` with no activation.
        activation: ``"relu"``, ``"mish"`` or ``"none"``, after each hidden layer.
        batch_norm: a ``BatchNorm1d`` after each hidden layer, before the activation (statistics over the
            batch's distinct ids).
        transform: ``"uniform"`` or ``"gaussian"`` encodings.
        mode: ``"sum"``, ``"mean"`` or ``"max"`` pooling.
        seed: seeds the hash parameters (buffers ``hash_a``, ``hash_b``: saved in ``state_dict``).
        include_last_offset: as :class:`torch.nn.EmbeddingBag`.

    Ids may be any int64 ``>= 0`` (there is no table to index). Caches (:mod:`mprec.nn.cache`) are
    used in eval mode without autograd (``torch.no_grad`` / ``torch.inference_mode``).
    """

    def __init__(self, embedding_dim: int, k: int = 1024, m: int = 1_000_000, decoder: Sequence[int] = (128,),
                 activation: str = "relu", batch_norm: bool = False, transform: str = "uniform", mode: str = "sum",
                 seed: int = 0, include_last_offset: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"DHEEmbeddingBag: embedding_dim must be >= 1, got {embedding_dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"DHEEmbeddingBag: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"DHEEmbeddingBag: transform must be one of {TRANSFORMS}, got {transform!r}")
        if transform == "gaussian" and k % 2:
            raise ValueError(f"DHEEmbeddingBag: the gaussian transform needs an even k, got k = {k}")
        if mode not in MODES:
            raise ValueError(f"DHEEmbeddingBag: mode must be one of {sorted(MODES)}, got {mode!r}")
        self.embedding_dim = embedding_dim
        self.k, self.m, self.p = k, m, next_prime(m)
        self.decoder_dims = tuple(int(h) for h in decoder)
        self.activation, self.batch_norm, self.transform = activation, batch_norm, transform
        self.mode, self.seed, self.include_last_offset = mode, seed, include_last_offset
        hash_a, hash_b, _ = dhe_hash_parameters(k, m, seed)
        # The hash parameters follow from the seed: on the meta device they are kept on the CPU, so a model
        # materialised later (torch's to_empty, TorchRec's DistributedModelParallel) still hashes correctly.
        hash_device = None if device is not None and torch.device(device).type == "meta" else device
        self.register_buffer("hash_a", hash_a.to(hash_device))
        self.register_buffer("hash_b", hash_b.to(hash_device))
        widths = (k, *self.decoder_dims, embedding_dim)
        self.layers = nn.ModuleList(nn.Linear(i, o, device=device, dtype=dtype) for i, o in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(h, device=device, dtype=dtype) for h in self.decoder_dims) \
            if batch_norm else None
        self.decoder_cache: Optional[EmbeddingCache] = None
        self.encoder_cache: Optional[EmbeddingCache] = None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draws the decoder (torch's default initialisation) and restores the hash parameters from the
        seed."""
        hash_a, hash_b, _ = dhe_hash_parameters(self.k, self.m, self.seed)
        self.hash_a.copy_(hash_a)
        self.hash_b.copy_(hash_b)
        for module in [*self.layers, *(self.norms or [])]:
            module.reset_parameters()

    # --- decoding -----------------------------------------------------------------------------------
    def _layer(self, i: int) -> tuple[Tensor, Optional[Tensor], str, bool]:
        """(weight, bias, activation to fuse, whether batch norm + activation still follow) of layer i.

        In eval mode batch norm is an affine map per channel and is folded into the layer, so the whole
        layer is one op with its activation fused: every row is then computed independently of the batch,
        which MP-Cache's exactness needs (a separate elementwise pass would not guarantee it).
        """
        layer = self.layers[i]
        if i == len(self.layers) - 1:
            return layer.weight, layer.bias, "none", False
        if self.norms is None:
            return layer.weight, layer.bias, self.activation, False
        if self.training:
            return layer.weight, layer.bias, "none", True
        bn = self.norms[i]
        acc = torch.float64 if layer.weight.dtype == torch.float64 else torch.float32
        scale = bn.weight.to(acc) * torch.rsqrt(bn.running_var.to(acc) + bn.eps)
        weight = (layer.weight.to(acc) * scale.unsqueeze(1)).to(layer.weight.dtype)
        bias = ((layer.bias.to(acc) - bn.running_mean.to(acc)) * scale + bn.bias.to(acc)).to(layer.weight.dtype)
        return weight, bias, self.activation, False

    def _first_layer(self, ids: Tensor) -> Tensor:
        weight, bias, activation, norm_follows = self._layer(0)
        if weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and not torch.compiler.is_compiling():
            warn_if_bf16_emulated("DHEEmbeddingBag")  # once per process, where the CPU has no native bf16
        x = dhe_encode_linear(ids, self.hash_a, self.hash_b, self.p, self.m, self.transform, weight, bias, activation)
        return apply_activation(self.norms[0](x), self.activation) if norm_follows else x

    def _later_layers(self, x: Tensor) -> Tensor:
        for i in range(1, len(self.layers)):
            weight, bias, activation, norm_follows = self._layer(i)
            x = rowwise_linear(x, weight, bias, activation)
            if norm_follows:
                x = apply_activation(self.norms[i](x), self.activation)
        return x

    def embed(self, ids: Tensor, occurrences: Optional[Tensor] = None) -> Tensor:
        """DHE vectors ``[U, D]`` of distinct ids ``[U]``, through the caches when they apply.

        ``occurrences`` (how often each id occurs in the batch) only feeds the caches' counters.
        """
        # Read once: another thread may enable or disable a cache meanwhile.
        decoder_cache, encoder_cache = self.decoder_cache, self.encoder_cache
        if not self._caches_apply(decoder_cache, encoder_cache):
            return self._later_layers(self._first_layer(ids))
        if occurrences is None:
            occurrences = torch.ones(ids.shape, dtype=torch.int64)
        version = self._version()

        def first_layer(ids, occurrences):
            if encoder_cache is None:
                return self._first_layer(ids)
            return encoder_cache.serve(ids, occurrences, version, lambda miss, _: self._first_layer(miss))

        def decode(ids, occurrences):
            return self._later_layers(first_layer(ids, occurrences))

        if decoder_cache is None:
            return decode(ids, occurrences)
        return decoder_cache.serve(ids, occurrences, version, decode)

    # --- bags -------------------------------------------------------------------------------------
    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        ids, inverse, occurrences = unique_ids(input)
        vectors = self.embed(ids, occurrences)
        return F.embedding_bag(inverse, vectors, offsets, mode=self.mode, per_sample_weights=per_sample_weights,
                               include_last_offset=self.include_last_offset)

    # --- caches -----------------------------------------------------------------------------------
    def padded(self, ids: Tensor, mask: Tensor, hash_fn: Optional[Callable] = None) -> Tensor:
        """The static-shape form (:mod:`mprec.nn.padded`): every slot's id hashed with integer ops (``hash_fn(ids,
        hash_a, hash_b, p, m) -> [N, k]``; default int64 arithmetic), transformed and decoded by the layers, then
        pooled over the slots. The same function as :meth:`forward`, up to rounding."""
        dtype = self.layers[0].weight.dtype
        # float32 encodings (float64 for float64 layers), as the kernels compute them.
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        x = dhe_encode_aten(ids.reshape(-1), self.hash_a, self.hash_b, self.p, self.m, self.transform, compute,
                            hash_fn or dhe_hash_aten).to(dtype)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = nn.functional.linear(x, layer.weight, layer.bias)
            if i < last:
                if self.norms is not None:
                    x = self.norms[i](x)
                x = apply_activation(x, self.activation)
        return pool_slots(x.view(*ids.shape, x.shape[1]), mask, self.mode, self.mode == "sum")

    def enable_cache(self, kind: str = "decoder", max_bytes: Optional[int] = None, max_entries: Optional[int] = None,
                     policy: str = "lfu") -> EmbeddingCache:
        """Attaches an MP-Cache: ``"decoder"`` (id -> final vector) or ``"encoder"`` (id -> first-layer
        output), bounded by ``max_bytes`` or ``max_entries``; ``policy`` ``"lfu"`` (online) or ``"static"``
        (filled by :meth:`fill_cache`). Returns the cache (its ``stats()`` has the hit counters)."""
        if kind not in _CACHES:
            raise ValueError(f"DHEEmbeddingBag.enable_cache: kind must be 'decoder' or 'encoder', got {kind!r}")
        if kind == "decoder":
            width, dtype = self.embedding_dim, self.layers[-1].weight.dtype
        else:
            width, dtype = self.layers[0].out_features, self.layers[0].weight.dtype
        cache = EmbeddingCache(width, dtype, max_bytes=max_bytes, max_entries=max_entries, policy=policy)
        setattr(self, f"{kind}_cache", cache)
        return cache

    def disable_cache(self, kind: str = "decoder") -> None:
        if kind not in _CACHES:
            raise ValueError(f"DHEEmbeddingBag.disable_cache: kind must be 'decoder' or 'encoder', got {kind!r}")
        setattr(self, f"{kind}_cache", None)

    @torch.no_grad()
    def fill_cache(self, sample: Tensor, kind: str = "decoder", top_n: Optional[int] = None) -> int:
        """Fills a cache with the ``top_n`` most frequent ids of ``sample`` (as many as fit when None),
        computed now. Returns the number of entries."""
        cache = getattr(self, f"{kind}_cache", None) if kind in _CACHES else None
        if cache is None:
            raise ValueError(f"DHEEmbeddingBag.fill_cache: no {kind!r} cache; call enable_cache({kind!r}) first")
        ids, counts = torch.unique(sample.reshape(-1).to(torch.int64), return_counts=True)
        order = torch.argsort(counts, descending=True, stable=True)
        n = min(cache.max_entries, ids.numel() if top_n is None else top_n)
        ids, counts = ids[order[:n]], counts[order[:n]]
        was_training = self.training
        self.eval()
        try:
            values = self._first_layer(ids) if kind == "encoder" else self._later_layers(self._first_layer(ids))
        finally:
            self.train(was_training)
        cache.validate(self._version())
        cache.fill(ids, values, counts)
        return len(cache)

    def _caches_apply(self, decoder_cache, encoder_cache) -> bool:
        # Caches serve inference only: in training the parameters change every step and hits would carry
        # no gradient. Under torch.compile the layer is traced without them.
        return ((decoder_cache is not None or encoder_cache is not None) and not self.training
                and not torch.is_grad_enabled() and not torch.compiler.is_compiling())

    def _version(self) -> tuple:
        """Identity and version counter of every tensor the vectors depend on."""
        tensors = list(self.parameters()) + list(self.buffers())
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)

    def extra_repr(self) -> str:
        widths = "-".join(str(w) for w in (self.k, *self.decoder_dims, self.embedding_dim))
        return (f"decoder={widths}, m={self.m}, transform={self.transform!r}, activation={self.activation!r}, "
                f"batch_norm={self.batch_norm}, mode={self.mode!r}")


def hybrid_vectors(table: Tensor, dhe: Tensor) -> Tensor:
    """A hybrid's output from its parts' vectors: ``[table | DHE]``, in the table's dtype. Every hybrid (the
    collection's features in either form, :class:`HybridEmbeddingBag`, the static-shape forms) joins its parts
    here."""
    return torch.cat([table, dhe.to(table.dtype)], dim=1)


class HybridEmbeddingBag(nn.Module):
    """Table and DHE side by side: ``forward`` returns ``[table(input) | dhe(input)]``, ``[B, table_dim +
    dhe_dim]``. The table part is a :class:`mprec.nn.EmbeddingBag` (``table``), the DHE part a
    :class:`DHEEmbeddingBag` (``dhe``); keyword arguments other than ``mode``, ``include_last_offset`` and
    ``sparse`` go to the DHE part. Caches: ``enable_cache`` / ``fill_cache`` act on the DHE part.
    """

    def __init__(self, num_embeddings: int, table_dim: int, dhe_dim: int, mode: str = "sum",
                 include_last_offset: bool = False, sparse: bool = False, device=None, dtype=None, **dhe_kwargs) -> None:
        super().__init__()
        self.num_embeddings, self.table_dim, self.dhe_dim = num_embeddings, table_dim, dhe_dim
        self.embedding_dim = table_dim + dhe_dim
        self.table = EmbeddingBag(num_embeddings, table_dim, mode=mode, include_last_offset=include_last_offset,
                                  sparse=sparse, device=device, dtype=dtype)
        self.dhe = DHEEmbeddingBag(dhe_dim, mode=mode, include_last_offset=include_last_offset, device=device,
                                   dtype=dtype, **dhe_kwargs)

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return hybrid_vectors(self.table(input, offsets, per_sample_weights),
                              self.dhe(input, offsets, per_sample_weights))

    def enable_cache(self, *args, **kwargs) -> EmbeddingCache:
        return self.dhe.enable_cache(*args, **kwargs)

    def disable_cache(self, *args, **kwargs) -> None:
        self.dhe.disable_cache(*args, **kwargs)

    def fill_cache(self, *args, **kwargs) -> int:
        return self.dhe.fill_cache(*args, **kwargs)

    @property
    def decoder_cache(self) -> Optional[EmbeddingCache]:
        return self.dhe.decoder_cache

    @property
    def encoder_cache(self) -> Optional[EmbeddingCache]:
        return self.dhe.encoder_cache
