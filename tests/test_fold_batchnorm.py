import pytest
import torch
from torch import nn

import norm_ext

FP32 = dict(atol=1e-5, rtol=1e-4)


def _randomize_bn(model):
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen))
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.randn(n, generator=gen))
                module.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


class Branchy(nn.Module):
    """A residual block: fx sees conv1 -> bn1 and conv2 -> bn2 through the non-Sequential forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(6)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return h + self.bn2(self.conv2(h))


class NotTraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU())
        self.tail_bn = nn.BatchNorm1d(4)

    def forward(self, x):
        y = self.body(x)
        if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            y = y * 2
        return self.tail_bn(y)


CASES = [
    (lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU()), (2, 2, 9), 1),
    (lambda: nn.Sequential(nn.Conv3d(2, 4, 2), nn.BatchNorm3d(4)), (2, 2, 4, 4, 4), 1),
    (lambda: nn.Sequential(nn.ConvTranspose1d(4, 6, 3, groups=2), nn.BatchNorm1d(6)), (2, 4, 7), 1),
    (lambda: nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2, bias=False), nn.BatchNorm2d(4)), (2, 3, 5, 5), 1),
    (lambda: nn.Sequential(nn.ConvTranspose3d(2, 4, 2), nn.BatchNorm3d(4, affine=False)), (2, 2, 3, 3, 3), 1),
    (
        lambda: nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3), nn.BatchNorm1d(3)),
        (4, 5),
        2,
    ),
    (Branchy, (2, 3, 8, 8), 2),
]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_folded_output_matches_eval_model(index):
    factory, shape, expected_folds = CASES[index]
    model = _randomize_bn(factory())
    x = torch.randn(shape)
    expected = model(x)
    folded, report = norm_ext.fold_batchnorm(model, return_report=True)
    assert len(report.folded) == expected_folds, report
    assert not report.skipped
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    torch.testing.assert_close(folded(x), expected, **FP32)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()), "original was modified"


def test_untraceable_model_falls_back_to_sequential_and_reports():
    model = _randomize_bn(NotTraceable())
    x = torch.randn(2, 2, 9)
    expected = model(x)
    folded, report = norm_ext.fold_batchnorm(model, return_report=True)
    assert report.folded == [("body.0", "body.1")]
    assert [name for name, _ in report.skipped] == ["tail_bn"]
    torch.testing.assert_close(folded(x), expected, **FP32)


def test_unfoldable_batchnorms_are_left_and_reported():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn_shared_input = nn.BatchNorm2d(4)
            self.bn_after_relu = nn.BatchNorm2d(4)
            self.bn_train = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 1)
            self.no_stats = nn.BatchNorm2d(4, track_running_stats=False)
            self.conv3 = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            a = self.bn_shared_input(y) + y
            b = self.bn_after_relu(torch.relu(a))
            return self.no_stats(self.conv3(self.bn_train(self.conv2(b))))

    model = _randomize_bn(Model())
    model.bn_train.train()
    folded, report = norm_ext.fold_batchnorm(model, return_report=True)
    reasons = dict(report.skipped)
    assert report.folded == []
    assert "also used elsewhere" in reasons["bn_shared_input"]
    assert "not the output of a Conv" in reasons["bn_after_relu"]
    assert "training mode" in reasons["bn_train"]
    assert "no running statistics" in reasons["no_stats"]
    assert isinstance(folded.bn_train, nn.BatchNorm2d)


def test_inplace_and_default_return():
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    result = norm_ext.fold_batchnorm(model, inplace=True)
    assert result is model
    assert isinstance(model[1], nn.Identity)


def test_compiled_folded_model():
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    folded = torch.compile(norm_ext.fold_batchnorm(model), fullgraph=True)
    torch.testing.assert_close(folded(x), expected, **FP32)


def test_bad_input():
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        norm_ext.fold_batchnorm(torch.randn(3))
