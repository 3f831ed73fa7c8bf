"""``EmbeddingBagCollection``: many sparse features in one call, each a table, a DHE or a hybrid of both.

It speaks two interfaces:

- mprec's own: built from table sizes and widths, called on FBGEMM's TBE layout (``indices`` of every
  feature concatenated, ``offsets`` of ``F * B + 1`` entries), returning ``[B, sum of widths]``;
- TorchRec's: built from ``torchrec.EmbeddingBagConfig`` s, called on a ``KeyedJaggedTensor``, returning a
  ``KeyedTensor`` keyed by feature, with state dict keys ``embedding_bags.<table>.weight``. A TorchRec
  ``EmbeddingBagCollection`` and this one load each other's state dicts, and TorchRec's
  ``DistributedModelParallel`` shards it with :class:`mprec.distributed.EmbeddingBagCollectionSharder`.

TorchRec is needed only for the second interface; it is imported when it is used.

Features and tables: each table (a module of :mod:`mprec.nn.features`, at ``embedding_bags.<table>``) serves
one or more features, as a TorchRec config's ``feature_names`` say. The TBE layout holds one entry per
(table, feature) pair, table by table; output keys are the feature names (``feature@table`` for a feature
that several tables serve, as TorchRec names them).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..ops.embedding_bag import MODES
from .features import FEATURE_KINDS, HYBRID_FORMS
from .pooling import FusedOptimizer, pool_tables, updates_in_place

__all__ = ["EmbeddingBagCollection", "REPRESENTATIONS"]

REPRESENTATIONS = tuple(FEATURE_KINDS)
_POOLINGS = {"SUM": "sum", "MEAN": "mean"}
_DATA_TYPES = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16}


def _is_config(x) -> bool:
    return hasattr(x, "num_embeddings") and hasattr(x, "embedding_dim") and hasattr(x, "feature_names")


class EmbeddingBagCollection(nn.Module):
    """Many sparse features, each represented as a table, a DHE or a hybrid of both (MP-Rec's "select").

    mprec's form:
        num_embeddings: rows of each table (ids of a DHE feature are not bounded by it).
        embedding_dim: output width of each feature (one int for all, or one per table).
        mode: ``"sum"``, ``"mean"`` or ``"max"``, shared by the tables.
        padding_idx: one per table (None for none; table features only), or None.
        names: table names (default ``t0, t1, ...``); each table serves one feature of the same name.

    TorchRec's form (``EmbeddingBagCollection(tables=[EmbeddingBagConfig, ...], is_weighted=False)``):
        tables: ``torchrec.EmbeddingBagConfig`` s (name, rows, width, ``feature_names``, ``pooling`` SUM or
            MEAN, ``data_type`` FP32, FP16 or BF16, ``init_fn`` / ``weight_init_min`` / ``weight_init_max``).
        is_weighted: features carry per-lookup weights (the KJT's ``weights()``), pooled by sum.

    Both forms:
        representations: ``"table"``, ``"dhe"`` or ``"hybrid"`` per table: a list, or a dict by table name
            (tables not named stay tables). Default all tables.
        dhe: keyword arguments for every DHE part (:class:`mprec.nn.DHEEmbeddingBag`: ``k``, ``m``,
            ``decoder``, ...); table ``i`` uses seed ``dhe.get("seed", 0) + i`` so tables hash differently.
        hybrid_form: ``"two"`` (default, the MP-Rec artifact's): a hybrid table's feature is two vectors of the
            table's width, its table vector and its DHE vector, side by side (``[B, 2 * width]``); ``"split"``:
            one vector of the table's width, ``hybrid_dhe_dim`` of its columns from the DHE.
        hybrid_dhe_dim: the split form's DHE share of a hybrid table's width (default half, rounded down; an int,
            a list per table or a dict by name); the table part takes the rest.
        sparse: sparse COO table gradients, as ``EmbeddingBag(sparse=True)``.
        optimizer: a :class:`FusedOptimizer` to train the tables inside the backward pass (no table gradient
            is built; ``table_parameters()`` are then left out of ``torch.optim``). Its state (row-wise
            Adagrad's accumulators) is :meth:`optimizer_state_dict`, outside the module's state dict.
        device, dtype: where and in what the parameters are made (``"meta"``: allocated later, e.g. by
            ``DistributedModelParallel``).

    ``forward(indices, offsets, per_sample_weights=None)`` takes the TBE layout and returns ``[B, sum of
    widths]``; ``forward(kjt)`` returns a ``torchrec.KeyedTensor``. Every table part is pooled by one
    ``mprec::batched_embedding_bag`` call per pooling mode.
    """

    def __init__(
        self,
        num_embeddings: Optional[Sequence] = None,
        embedding_dim: Optional[Union[int, Sequence[int]]] = None,
        mode: str = "sum",
        padding_idx: Optional[Sequence[Optional[int]]] = None,
        sparse: bool = False,
        representations: Optional[Union[Sequence[str], Mapping[str, str]]] = None,
        dhe: Optional[dict] = None,
        hybrid_dhe_dim: Optional[Union[int, Sequence[int], Mapping[str, int]]] = None,
        optimizer: Optional[FusedOptimizer] = None,
        device=None,
        dtype=None,
        *,
        tables: Optional[Sequence] = None,
        is_weighted: bool = False,
        names: Optional[Sequence[str]] = None,
        hybrid_form: str = "two",
    ) -> None:
        super().__init__()
        op = "EmbeddingBagCollection"
        if tables is None and num_embeddings is not None and len(num_embeddings) and _is_config(num_embeddings[0]):
            tables, num_embeddings = num_embeddings, None  # TorchRec's positional form
        if tables is not None:
            if num_embeddings is not None or embedding_dim is not None or padding_idx is not None or names:
                raise ValueError(f"{op}: give either tables (TorchRec configs) or num_embeddings and embedding_dim")
            specs = self._specs_from_configs(list(tables), dtype)
            self._configs = list(tables)
        else:
            if num_embeddings is None or embedding_dim is None:
                raise ValueError(f"{op}: needs tables (TorchRec configs) or num_embeddings and embedding_dim")
            specs = self._specs_from_sizes(list(num_embeddings), embedding_dim, mode, padding_idx, names, dtype)
            self._configs = None
        table_names = [s["name"] for s in specs]
        reps = self._per_table(op, "representations", representations, table_names, "table")
        for name, r in zip(table_names, reps):
            if r not in REPRESENTATIONS:
                raise ValueError(f"{op}: representation of table {name!r} must be one of {REPRESENTATIONS}, "
                                 f"got {r!r}")
        if hybrid_form not in HYBRID_FORMS:
            raise ValueError(f"{op}: hybrid_form must be one of {HYBRID_FORMS}, got {hybrid_form!r}")
        if hybrid_form == "two" and hybrid_dhe_dim is not None:
            raise ValueError(f"{op}: hybrid_dhe_dim divides a hybrid's width in hybrid_form='split'; in the "
                             "'two' form each part has the table's width")
        self.hybrid_form = hybrid_form
        self._widths = {s["name"]: s["embedding_dim"] for s in specs}  # as declared (a "two" hybrid returns twice)
        hybrid = self._per_table(op, "hybrid_dhe_dim", hybrid_dhe_dim, table_names, None)
        if optimizer is not None:
            if any(s["mode"] == "max" for s, r in zip(specs, reps) if r != "dhe"):
                raise ValueError(f"{op}: fused optimizers support modes sum and mean, not max")
            if sparse:
                raise ValueError(f"{op}: a fused optimizer builds no table gradient; sparse=True does not apply")
        if is_weighted and any(s["mode"] != "sum" for s in specs):
            raise ValueError(f"{op}: weighted features are pooled by sum; every table's pooling must be sum")

        dhe = dict(dhe or {})
        base_seed = dhe.pop("seed", 0)
        self.embedding_bags = nn.ModuleDict()
        for i, (spec, rep) in enumerate(zip(specs, reps)):
            name, width = spec["name"], spec["embedding_dim"]
            if rep != "table" and spec["padding_idx"] is not None:
                raise ValueError(f"{op}: padding_idx is for table features; table {name!r} is {rep!r}")
            dhe_args = dict(dhe, seed=base_seed + i, mode=spec["mode"], device=device, dtype=spec["dtype"])
            if rep == "table":
                feature = FEATURE_KINDS["table"](spec["num_embeddings"], width, spec["mode"], spec["padding_idx"],
                                                 spec["init_fn"], device=device, dtype=spec["dtype"])
            elif rep == "dhe":
                feature = FEATURE_KINDS["dhe"](width, num_embeddings=spec["num_embeddings"], **dhe_args)
            else:
                h = width if hybrid_form == "two" else width // 2 if hybrid[i] is None else int(hybrid[i])
                if hybrid_form == "split" and not 0 < h < width:
                    raise ValueError(f"{op}: hybrid table {name!r} of width {width} cannot give {h} columns to "
                                     "its DHE")
                table_dim = width if hybrid_form == "two" else width - h
                feature = FEATURE_KINDS["hybrid"](spec["num_embeddings"], table_dim, h, init_fn=spec["init_fn"],
                                                  **dhe_args)
            self.embedding_bags[name] = feature

        # The TBE layout: one entry per (table, feature), table by table.
        self._entry_tables = [s["name"] for s in specs for _ in s["feature_names"]]
        self._entry_features = [f for s in specs for f in s["feature_names"]]
        shared = {f for f in self._entry_features if self._entry_features.count(f) > 1}
        self._embedding_names = [f"{f}@{t}" if f in shared else f
                                 for t, f in zip(self._entry_tables, self._entry_features)]
        if len(set(self._embedding_names)) != len(self._embedding_names):
            raise ValueError(f"{op}: a table lists the same feature twice: {self._entry_features}")
        self._is_weighted = is_weighted
        self._device = torch.device(device) if device is not None else next(
            (p.device for p in self.parameters()), torch.device("cpu"))
        self.mode = mode if self._configs is None else None
        self.sparse = sparse
        self.optimizer = optimizer
        if optimizer is not None:
            for feature in self.table_features():
                feature.register_buffer("momentum1", optimizer.new_state(feature.weight), persistent=False)

    # --- construction helpers ----------------------------------------------------------------------------
    @staticmethod
    def _specs_from_sizes(num_embeddings, embedding_dim, mode, padding_idx, names, dtype) -> list:
        op = "EmbeddingBagCollection"
        if not num_embeddings:
            raise ValueError(f"{op} needs at least one table")
        T = len(num_embeddings)
        dims = [embedding_dim] * T if isinstance(embedding_dim, int) else list(embedding_dim)
        if len(dims) != T:
            raise ValueError(f"{op}: {len(dims)} embedding dims for {T} tables")
        if mode not in MODES:
            raise ValueError(f"{op}: mode must be one of {sorted(MODES)}, got {mode!r}")
        if padding_idx is not None and len(padding_idx) != T:
            raise ValueError(f"{op}: {len(padding_idx)} padding_idx for {T} tables")
        names = [f"t{t}" for t in range(T)] if names is None else list(names)
        if len(names) != T or len(set(names)) != T:
            raise ValueError(f"{op}: names must be {T} distinct table names, got {names}")
        return [dict(name=n, num_embeddings=int(rows), embedding_dim=int(d), feature_names=[n], mode=mode,
                     padding_idx=None if padding_idx is None else padding_idx[t], init_fn=None, dtype=dtype)
                for t, (n, rows, d) in enumerate(zip(names, num_embeddings, dims))]

    @staticmethod
    def _specs_from_configs(tables, dtype) -> list:
        op = "EmbeddingBagCollection"
        if not tables:
            raise ValueError(f"{op} needs at least one table")
        specs, seen = [], set()
        for config in tables:
            if not _is_config(config):
                raise ValueError(f"{op}: tables must be torchrec.EmbeddingBagConfig, got {type(config).__name__}")
            if not config.name:
                raise ValueError(f"{op}: every table config needs a name")
            if config.name in seen:
                raise ValueError(f"{op}: duplicate table name {config.name!r}")
            seen.add(config.name)
            if not config.feature_names:
                config.feature_names = [config.name]  # TorchRec's convention
            pooling = getattr(config.pooling, "name", str(config.pooling))
            if pooling not in _POOLINGS:
                raise ValueError(f"{op}: table {config.name!r} has pooling {pooling}; an embedding bag pools by "
                                 f"{' or '.join(_POOLINGS)}")
            data_type = getattr(config.data_type, "name", str(config.data_type))
            if data_type not in _DATA_TYPES:
                raise ValueError(f"{op}: table {config.name!r} has data_type {data_type}; supported: "
                                 f"{', '.join(_DATA_TYPES)}")
            if dtype is not None and dtype != _DATA_TYPES[data_type]:
                raise ValueError(f"{op}: dtype={dtype} contradicts table {config.name!r}'s data_type {data_type}")
            specs.append(dict(name=config.name, num_embeddings=int(config.num_embeddings),
                              embedding_dim=int(config.embedding_dim), feature_names=list(config.feature_names),
                              mode=_POOLINGS[pooling], padding_idx=None, init_fn=config.init_fn,
                              dtype=_DATA_TYPES[data_type]))
        return specs

    @staticmethod
    def _per_table(op: str, what: str, value, names: list, default) -> list:
        """A per-table argument given as one value, a list in table order or a dict by table name."""
        if value is None:
            return [default] * len(names)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise ValueError(f"{op}: {what} names tables {unknown} that the collection does not have "
                                 f"(its tables: {names})")
            return [value.get(n, default) for n in names]
        if isinstance(value, (str, int)):
            return [value] * len(names)
        value = list(value)
        if len(value) != len(names):
            raise ValueError(f"{op}: {len(value)} {what} for {len(names)} tables")
        return value

    # --- TorchRec's EmbeddingBagCollectionInterface --------------------------------------------------------
    def embedding_bag_configs(self) -> list:
        """The tables as ``torchrec.EmbeddingBagConfig`` s (as given, or made from mprec's form)."""
        if self._configs is None:
            self._configs = [self._config_of(name, feature, self._widths[name])
                             for name, feature in self.embedding_bags.items()]
        return self._configs

    def _config_of(self, name: str, feature: nn.Module, width: int):
        from torchrec import EmbeddingBagConfig, PoolingType
        from torchrec.types import DataType

        data_type = {v: k for k, v in _DATA_TYPES.items()}.get(next(feature.parameters()).dtype, "FP32")
        if feature.mode.upper() not in _POOLINGS:
            raise ValueError(f"EmbeddingBagCollection: table {name!r} pools by {feature.mode}, which TorchRec's "
                             f"configs cannot express ({' or '.join(_POOLINGS)})")
        return EmbeddingBagConfig(num_embeddings=feature.num_embeddings or 1, embedding_dim=width, name=name,
                                  feature_names=[f for t, f in zip(self._entry_tables, self._entry_features)
                                                 if t == name],
                                  pooling=PoolingType[feature.mode.upper()], data_type=DataType[data_type],
                                  init_fn=getattr(feature, "init_fn", None))

    def table_configs(self) -> list:
        """``torchrec.EmbeddingBagConfig`` s of the table parts only (a hybrid's at its table width): what
        TorchRec shards; DHE parts are replicated."""
        return [self._config_of(name, feature, feature.table_dim) for name, feature in self.embedding_bags.items()
                if feature.table_dim]

    def is_weighted(self) -> bool:
        return self._is_weighted

    @property
    def device(self) -> torch.device:
        return self._device

    # --- structure --------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """The feature of each TBE entry, in the layout's order (a feature several tables serve repeats)."""
        return list(self._entry_features)

    @property
    def embedding_names(self) -> list[str]:
        """The output keys, one per TBE entry."""
        return list(self._embedding_names)

    @property
    def num_tables(self) -> int:
        """Entries of the TBE layout (``offsets`` has ``num_tables * B + 1`` entries)."""
        return len(self._entry_tables)

    @property
    def representations(self) -> list[str]:
        """The representation of each TBE entry."""
        return [self.embedding_bags[t].kind for t in self._entry_tables]

    @property
    def embedding_dims(self) -> list[int]:
        """The output width of each TBE entry."""
        return [self.embedding_bags[t].embedding_dim for t in self._entry_tables]

    @property
    def num_embeddings(self) -> list[int]:
        """Rows of each TBE entry's table (for a DHE, the id range it was declared with)."""
        return [self.embedding_bags[t].num_embeddings for t in self._entry_tables]

    def features(self) -> list[nn.Module]:
        """The feature module of each TBE entry (modules repeat where a table serves several features)."""
        bags = self.embedding_bags  # a submodule: each self.embedding_bags goes through nn.Module.__getattr__
        return [bags[t] for t in self._entry_tables]

    def table_features(self) -> list[nn.Module]:
        """The modules that hold a table, each once."""
        return [f for f in self.embedding_bags.values() if f.table_dim]

    def table_parameters(self) -> list[nn.Parameter]:
        """The tables (trained by the fused optimizer when one is set)."""
        return [f.weight for f in self.table_features()]

    def dhe_modules(self) -> dict:
        """``{table name: DHEEmbeddingBag}`` of the DHE and hybrid tables (caches are enabled on these)."""
        return {name: f.dhe for name, f in self.embedding_bags.items() if f.dhe is not None}

    def reset_parameters(self) -> None:
        for feature in self.embedding_bags.values():
            feature.reset_parameters()

    # --- optimizer state ----------------------------------------------------------------------------------
    def optimizer_state_dict(self) -> dict:
        """The fused optimizer's state: ``{"<table>.momentum1": accumulator}`` for row-wise Adagrad (the keys
        of TorchRec's fused optimizer state), empty otherwise."""
        return {f"{name}.momentum1": f.momentum1 for name, f in self.embedding_bags.items()
                if getattr(f, "momentum1", None) is not None}

    def load_optimizer_state_dict(self, state: Mapping[str, Tensor]) -> None:
        mine = self.optimizer_state_dict()
        if set(mine) != set(state):
            raise ValueError(f"EmbeddingBagCollection.load_optimizer_state_dict: expected keys {sorted(mine)}, got "
                             f"{sorted(state)}")
        with torch.no_grad():
            for key, value in state.items():
                if value.shape != mine[key].shape:
                    raise ValueError(f"EmbeddingBagCollection.load_optimizer_state_dict: {key} has shape "
                                     f"{list(value.shape)}, expected {list(mine[key].shape)}")
                mine[key].copy_(value)

    # --- forward ------------------------------------------------------------------------------------------
    def forward(self, indices, offsets: Optional[Tensor] = None, per_sample_weights: Optional[Tensor] = None):
        if not isinstance(indices, Tensor):
            return self._forward_keyed(indices)
        if offsets is None:
            raise ValueError("EmbeddingBagCollection: offsets are required with a tensor of indices (TBE layout)")
        out = self.pool(indices, offsets, per_sample_weights)
        return out if isinstance(out, Tensor) else torch.cat(out, dim=1)

    def pool(self, indices: Tensor, offsets: Tensor,
             per_sample_weights: Optional[Tensor] = None) -> Union[Tensor, list[Tensor]]:
        """Each TBE entry's vector ``[B, width]`` (a list), or their concatenation when the table pooling already
        is the whole output."""
        features = self.features()
        B = self._batch(offsets)
        groups = self._pooling_groups(features)
        whole = list(range(len(features)))
        if len(groups) == 1 and groups[0][1] == whole and all(f.table_dim == f.embedding_dim for f in features):
            return self._pool_group(features, whole, indices, offsets, per_sample_weights, groups[0][0])
        starts = offsets[::B].tolist() if B else [0] * (len(features) + 1)
        tables = {}
        for mode, entries in groups:
            if entries == whole:
                idx, offs, psw = indices, offsets, per_sample_weights
            else:  # these entries' lookups, with offsets re-based
                idx = torch.cat([indices[starts[e]:starts[e + 1]] for e in entries])
                offs, base = [], 0
                for e in entries:
                    offs.append(offsets[e * B:(e + 1) * B] - starts[e] + base)
                    base += starts[e + 1] - starts[e]
                offs = torch.cat(offs + [offsets.new_tensor([base])])
                psw = None if per_sample_weights is None else torch.cat(
                    [per_sample_weights[starts[e]:starts[e + 1]] for e in entries])
            pooled = self._pool_group(features, entries, idx, offs, psw, mode)
            tables.update(zip(entries, pooled.split([features[e].table_dim for e in entries], dim=1)))
        return self.complete(tables, indices, offsets, per_sample_weights, starts)

    def complete(self, tables: dict, indices: Optional[Tensor] = None, offsets: Optional[Tensor] = None,
                 per_sample_weights: Optional[Tensor] = None, starts: Optional[list] = None) -> list[Tensor]:
        """Each TBE entry's vector from its pooled table columns (``tables``: entry -> ``[B, table_dim]``) and,
        for a feature wider than its table (a DHE part), its own bags in the TBE layout. A sharded collection
        calls this with the table parts it pooled across ranks."""
        features = self.features()
        needs_bags = [f.table_dim < f.embedding_dim for f in features]
        if any(needs_bags):
            B = self._batch(offsets)
            if starts is None:
                starts = offsets[::B].tolist() if B else [0] * (len(features) + 1)
        out = []
        for e, feature in enumerate(features):
            if not needs_bags[e]:
                out.append(tables[e])
                continue
            psw = None if per_sample_weights is None else per_sample_weights[starts[e]:starts[e + 1]]
            out.append(feature(tables.get(e), indices[starts[e]:starts[e + 1]],
                               offsets[e * B:(e + 1) * B] - starts[e], psw))
        return out

    def _batch(self, offsets: Tensor) -> int:
        F = self.num_tables
        if offsets.dim() != 1 or (offsets.numel() - 1) % F:
            raise ValueError(f"EmbeddingBagCollection: offsets must have F * B + 1 entries for F = {F} features, "
                             f"got {offsets.numel()}")
        return (offsets.numel() - 1) // F

    @staticmethod
    def _pooling_groups(features) -> list:
        """``[(mode, entries)]``: the entries with a table, by pooling mode (one call each)."""
        groups: dict[str, list[int]] = {}
        for e, f in enumerate(features):
            if f.table_dim:
                groups.setdefault(f.mode, []).append(e)
        return list(groups.items())

    def _pool_group(self, features, entries, indices, offsets, per_sample_weights, mode) -> Tensor:
        chosen = [features[e] for e in entries]
        pads = [f.padding_row for f in chosen]
        weights = [f.weight for f in chosen]
        # Only a fused optimizer registers the tables' state (None where it keeps none); asking a feature for a
        # state it lacks raises inside nn.Module.__getattr__, which cost a small batch a large share of its time.
        # Only a call that updates the tables in place reads them, so inference asks for no state at all.
        states = [f.momentum1 for f in chosen] if updates_in_place(weights, self.optimizer) else ()
        return pool_tables(weights, indices, offsets, MODES[mode], per_sample_weights,
                           pads if any(p >= 0 for p in pads) else [], self.optimizer, states, self.sparse)

    def _forward_keyed(self, features):
        """TorchRec's interface: KeyedJaggedTensor in, KeyedTensor out."""
        from torchrec import KeyedTensor

        values, offsets, weights = self.keyed_to_tbe(features)
        out = self.pool(values, offsets, weights)
        out = out if isinstance(out, Tensor) else torch.cat(out, dim=1)
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()  # as TorchRec's collection returns
        return KeyedTensor(keys=self.embedding_names, length_per_key=self.embedding_dims, values=out)

    def check_keys(self, keys: Sequence[str]) -> None:
        """Refuses the keys of a KeyedJaggedTensor that lack a feature of the collection or name one it does
        not have, naming them."""
        wanted = list(dict.fromkeys(self._entry_features))
        missing = [f for f in wanted if f not in keys]
        unknown = [k for k in keys if k not in wanted]
        if missing or unknown:
            raise ValueError(f"EmbeddingBagCollection: the KeyedJaggedTensor's keys {list(keys)} do not match the "
                             f"collection's features {wanted}" + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {unknown}" if unknown else ""))

    def keyed_to_tbe(self, features) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """(indices, offsets, per_sample_weights) of a ``KeyedJaggedTensor`` in this collection's TBE layout;
        a KJT that lacks a feature, has features the collection does not know, or varies the batch size per
        feature is refused, naming the keys."""
        op = "EmbeddingBagCollection"
        keys = list(features.keys())
        self.check_keys(keys)
        if features.variable_stride_per_key():
            raise ValueError(f"{op}: KeyedJaggedTensors with a batch size per feature are not supported")
        if keys != self._entry_features:
            features = features.permute([keys.index(f) for f in self._entry_features])
        values = features.values()
        weights = features.weights_or_none()
        if self._is_weighted and weights is None:
            raise ValueError(f"{op}: the collection is weighted (is_weighted=True) but the KeyedJaggedTensor has "
                             "no weights")
        return values, features.offsets().to(values.dtype), weights if self._is_weighted else None

    def extra_repr(self) -> str:
        return f"features={self.embedding_names}"
