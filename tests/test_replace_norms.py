"""replace_norms: torch.nn norms and hand-written RMSNorm classes swapped in place, outputs unchanged."""

import pytest
import torch
from torch import nn

import norm_ext


class LlamaStyleRMSNorm(nn.Module):
    """The RMSNorm of Llama-family code bases: fp32 statistics, ``variance_epsilon``."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class GemmaStyleRMSNorm(nn.Module):
    """Scales by ``1 + weight``, the weight initialised to zeros."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).type_as(x)


class LooksLikeANormButIsNot(nn.Module):
    """Same structure as an RMSNorm (weight + eps) but a plain scale: must be left alone."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = 1e-5

    def forward(self, x):
        return x * self.weight


class TinyTransformerish(nn.Module):
    def __init__(self, norm_cls, d=32):
        super().__init__()
        self.embed = nn.Linear(12, d)
        self.norm1 = norm_cls(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm2 = norm_cls(d)
        self.scale = LooksLikeANormButIsNot(d)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.mlp(self.norm1(h))
        return self.scale(self.norm2(h))


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


def _swapped_names(report):
    return sorted(r.name for r in report.replaced)


def test_torch_modules_are_swapped_with_identical_outputs():
    model = nn.Sequential(
        nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 16), nn.RMSNorm(16, eps=1e-6), nn.Linear(16, 4)
    )
    _perturb(model)
    x = torch.randn(5, 3, 8)
    expected = model(x)
    params_before = [id(p) for p in model.parameters()]
    report = norm_ext.replace_norms(model)
    assert _swapped_names(report) == ["1", "4"]
    assert type(model[1]) is norm_ext.nn.LayerNorm and type(model[4]) is norm_ext.nn.RMSNorm
    assert [id(p) for p in model.parameters()] == params_before, "parameters keep their identity"
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert "replaced 2 module(s)" in str(report)


@pytest.mark.parametrize("norm_cls", [LlamaStyleRMSNorm, GemmaStyleRMSNorm])
def test_custom_rms_norm_classes_are_matched_by_structure(norm_cls):
    model = TinyTransformerish(norm_cls)
    _perturb(model)
    x = torch.randn(4, 7, 12)
    expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = norm_ext.replace_norms(model)
    assert _swapped_names(report) == ["norm1", "norm2"]
    assert all(r.old_type.endswith(norm_cls.__qualname__) for r in report.replaced)
    assert isinstance(model.norm1, norm_ext.nn.RMSNorm)
    assert model.norm1.zero_centered_weight == (norm_cls is GemmaStyleRMSNorm)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert set(model.state_dict()) == set(state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    skipped = {s.name: s.reason for s in report.skipped}
    assert "scale" in skipped and "differs on a probe input" in skipped["scale"]
    assert isinstance(model.scale, LooksLikeANormButIsNot)


def test_gradients_flow_to_the_original_parameters():
    model = TinyTransformerish(LlamaStyleRMSNorm)
    _perturb(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    norm_ext.replace_norms(model)
    before = model.norm1.weight.detach().clone()
    model(torch.randn(2, 3, 12)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(model.norm1.weight, before), "the optimizer still owns the swapped module's weight"


def test_kinds_filter_and_unavailable_modules_are_reported():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.GroupNorm(2, 8), nn.Flatten(), nn.LayerNorm(8 * 2 * 4)
    )
    model.eval()
    x = torch.randn(2, 3, 4, 6)
    expected = model(x)
    report = norm_ext.replace_norms(model, kinds=("layer_norm", "batch_norm", "group_norm"))
    by_name = {s.name: s.reason for s in report.skipped}
    for name, cls in (("1", "BatchNorm2d"), ("2", "GroupNorm")):
        if hasattr(norm_ext.nn, cls):
            assert name in _swapped_names(report)
        else:
            assert by_name[name] == f"not available in this build (norm_ext.nn.{cls} is missing)"
    assert "4" in _swapped_names(report)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)

    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    report = norm_ext.replace_norms(model, kinds=("rms_norm",))
    assert not report.replaced and report.skipped[0].reason == "kind not requested"
    assert type(model[1]) is nn.LayerNorm


def test_already_converted_and_unsupported_modules_are_left_alone():
    model = nn.Sequential(nn.LayerNorm(6), nn.InstanceNorm1d(3, affine=True))
    hooked = nn.RMSNorm(6)
    hooked.register_forward_hook(lambda *args: None)
    model.append(hooked)
    norm_ext.replace_norms(model)
    report = norm_ext.replace_norms(model)
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["0"] == "already a norm_ext module"
    assert "no norm_ext counterpart" in reasons["1"]
    assert "hooks" in reasons["2"]


def test_batch_norm_running_stats_are_not_touched_by_the_probe():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.train()
    before = model[1].running_mean.clone()
    norm_ext.replace_norms(model)
    assert torch.equal(model[1].running_mean, before)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown kinds"):
        norm_ext.replace_norms(nn.Linear(2, 2), kinds=("layer_norm", "weight_norm"))
