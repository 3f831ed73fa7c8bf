"""mprec.precision: "auto" follows the CPU's native bfloat16 (oneDNN's answer), an explicit bf16 on a CPU without
it warns once with the measured slowdown, and every place that takes a precision uses the rule."""

import warnings

import pytest
import torch

from mprec import precision
from mprec.training import RunConfig


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not warned yet."""
    monkeypatch.setattr(precision, "_warned", set())
    return monkeypatch


def test_auto_follows_onednn():
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert precision.bf16_native() == native
    assert precision.resolve("auto") == ("bf16" if native else "fp32")
    assert precision.resolve("fp32") == "fp32"


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_either_kind_of_cpu(fresh, native):
    fresh.setattr(precision, "bf16_native", lambda: native)
    assert precision.resolve("auto") == ("bf16" if native else "fp32")
    with precision.autocast("auto"):
        assert torch.is_autocast_enabled("cpu") == native
    with precision.autocast("fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_explicit_bf16_without_native_warns_once_with_the_measured_slowdown(fresh):
    fresh.setattr(precision, "bf16_native", lambda: False)
    fresh.setattr(precision, "bf16_slowdown", lambda: 12.5)
    with pytest.warns(RuntimeWarning, match=r"mprec train: bfloat16 was asked for, but this CPU has no native "
                                            r"bfloat16 .* runs 12.5x slower than float32 here \(measured\)"):
        assert precision.resolve("bf16", "mprec train") == "bf16"  # still honoured
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.resolve("bf16", "mprec train")  # once per caller and process
        with precision.autocast("bf16", what="mprec train"):
            assert torch.is_autocast_enabled("cpu")


def test_explicit_bf16_with_native_is_silent(fresh):
    fresh.setattr(precision, "bf16_native", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve("bf16") == "bf16"


def test_slowdown_is_measured():
    slowdown = precision.bf16_slowdown()
    assert slowdown > 0 and slowdown == precision.bf16_slowdown()  # measured once


def test_bad_precision_is_named():
    with pytest.raises(ValueError, match=r"mprec train: precision must be one of \('auto', 'fp32', 'bf16'\), "
                                         r"got 'fp16'"):
        precision.resolve("fp16", "mprec train")
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'fp32', 'bf16'\), got 'tf32'"):
        RunConfig(precision="tf32").validate()


def test_defaults_are_auto():
    import argparse

    from mprec.cli import add_train_parser
    from mprec.sched.paths import LoadedModel, Path

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    assert RunConfig().precision == "auto"
    assert parser.parse_args(["train"]).precision == "auto"
    assert LoadedModel.__dataclass_fields__["precision"].default == "auto"
    assert Path.__init__.__defaults__[0] == "auto"


def test_dhe_layer_with_bf16_weights_warns_once(fresh):
    from mprec.nn import DHEEmbeddingBag

    fresh.setattr(precision, "bf16_native", lambda: False)
    fresh.setattr(precision, "bf16_slowdown", lambda: 7.0)
    layer = DHEEmbeddingBag(8, k=16, m=1000, decoder=(16,)).to(torch.bfloat16)
    ids, offsets = torch.tensor([1, 2, 3]), torch.tensor([0, 2])
    with pytest.warns(RuntimeWarning, match=r"DHEEmbeddingBag: bfloat16 was asked for.* 7.0x slower"):
        layer(ids, offsets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(ids, offsets)
        DHEEmbeddingBag(8, k=16, m=1000, decoder=(16,))(ids, offsets)  # float32 weights: nothing to say
