"""BatchNorm ops, functional API and modules on one device, against float64 references."""

import pytest
import torch

import norm_ext
from norm_ext import reference as ref
from tests.conftest import DEVICES

# (output, dx, dweight/dbias, running stats) tolerances per input dtype.
TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),
}
PARAM_TOL = {
    torch.float32: dict(atol=1e-3, rtol=1e-4),
    torch.float64: dict(atol=1e-5, rtol=1e-5),  # float32 parameters
    torch.float16: dict(atol=1e-1, rtol=2e-2),
    torch.bfloat16: dict(atol=3e-1, rtol=4e-2),
}

# (shape, memory format)
LAYOUTS = [
    ((16, 5), None),
    ((4, 6, 9), None),
    ((3, 4, 5, 7), None),
    ((3, 4, 5, 7), torch.channels_last),
    ((2, 65, 6, 6), torch.channels_last),
    ((2, 3, 3, 4, 5), torch.channels_last_3d),
    ((4, 6, 9), "transposed"),  # (N, C, L) with C innermost
]


def _make_input(shape, fmt, dtype, device, offset=0.0, scale=1.0):
    x = (torch.randn(shape, dtype=torch.float64) * scale + offset).to(dtype=dtype, device=device)
    if fmt == "transposed":
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if fmt is not None:
        return x.contiguous(memory_format=fmt)
    return x


def _grads(out, inputs, grad):
    return torch.autograd.grad(out, inputs, grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,fmt", LAYOUTS)
def test_functional_training_parity(device, dtype, shape, fmt):
    channels = shape[1]
    weight = torch.randn(channels, device=device, requires_grad=True)
    bias = torch.randn(channels, device=device, requires_grad=True)
    running_mean = torch.zeros(channels, device=device)
    running_var = torch.ones(channels, device=device)
    ref_mean, ref_var = running_mean.double(), running_var.double()
    for _ in range(3):
        x = _make_input(shape, fmt, dtype, device, offset=2.0, scale=3.0).requires_grad_()
        out = norm_ext.batch_norm(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5)
        assert out.dtype == dtype and out.stride() == x.stride()
        grad = torch.randn_like(out)
        dx, dw, db = _grads(out, (x, weight, bias), grad)

        x64 = x.detach().double().requires_grad_()
        w64 = weight.detach().double().requires_grad_()
        b64 = bias.detach().double().requires_grad_()
        expected, ref_mean, ref_var = ref.batch_norm(x64, ref_mean, ref_var, w64, b64, True, 0.1, 1e-5)
        edx, edw, edb = _grads(expected, (x64, w64, b64), grad.double())
        torch.testing.assert_close(out.double(), expected, **TOL[dtype])
        torch.testing.assert_close(dx.double(), edx, **TOL[dtype])
        torch.testing.assert_close(dw.double(), edw, **PARAM_TOL[dtype])
        torch.testing.assert_close(db.double(), edb, **PARAM_TOL[dtype])
        torch.testing.assert_close(running_mean.double(), ref_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(running_var.double(), ref_var, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,fmt", [((3, 4, 5, 7), None), ((3, 4, 5, 7), torch.channels_last)])
def test_eval_uses_running_stats(device, shape, fmt):
    channels = shape[1]
    x = _make_input(shape, fmt, torch.float32, device).requires_grad_()
    weight = torch.randn(channels, device=device, requires_grad=True)
    running_mean = torch.randn(channels, device=device)
    running_var = torch.rand(channels, device=device) + 0.5
    before = running_mean.clone(), running_var.clone()
    out = norm_ext.batch_norm(x, running_mean, running_var, weight, None, False)
    grad = torch.randn_like(out)
    dx, dw = _grads(out, (x, weight), grad)
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    expected, _, _ = ref.batch_norm(x64, running_mean, running_var, w64, None, training=False)
    edx, edw = _grads(expected, (x64, w64), grad.double())
    torch.testing.assert_close(out.double(), expected, **TOL[torch.float32])
    torch.testing.assert_close(dx.double(), edx, **TOL[torch.float32])
    torch.testing.assert_close(dw.double(), edw, **PARAM_TOL[torch.float32])
    assert torch.equal(running_mean, before[0]) and torch.equal(running_var, before[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", [None, torch.channels_last])
def test_large_offset_and_variance_below_eps(device, fmt):
    # Mean 1e4 with std 1e-2: E[x^2] - E[x]^2 would lose the variance entirely in fp32.
    x = _make_input((8, 3, 6, 6), fmt, torch.float32, device, offset=1e4, scale=1e-2)
    running_mean, running_var = torch.zeros(3, device=device), torch.ones(3, device=device)
    out = norm_ext.batch_norm(x, running_mean, running_var, training=True, momentum=1.0, eps=1e-8)
    expected, _, exp_var = ref.batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=1.0, eps=1e-8)
    torch.testing.assert_close(running_var.double().cpu(), exp_var, rtol=1e-3, atol=0)
    torch.testing.assert_close(out.double(), expected.to(device), atol=1e-1, rtol=0)
    # Variance (1e-8) below eps (1e-5): the normalized values are tiny but exact.
    tiny = _make_input((8, 3, 6, 6), fmt, torch.float32, device, offset=1.0, scale=1e-4)
    out = norm_ext.batch_norm(tiny, None, None, training=True)
    expected, _, _ = ref.batch_norm(tiny, training=True)
    torch.testing.assert_close(out.double(), expected, atol=5e-5, rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(
    "cls,torch_cls,shape",
    [
        (norm_ext.nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4, 5)),
        (norm_ext.nn.BatchNorm2d, torch.nn.BatchNorm2d, (3, 4, 5, 6)),
        (norm_ext.nn.BatchNorm3d, torch.nn.BatchNorm3d, (2, 4, 3, 4, 5)),
    ],
)
def test_modules_match_torch(device, momentum, cls, torch_cls, shape):
    ours = cls(4, momentum=momentum, device=device)
    theirs = torch_cls(4, momentum=momentum, device=device, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    theirs.load_state_dict(ours.state_dict())
    for _ in range(3):
        x = torch.randn(shape, device=device)
        torch.testing.assert_close(ours(x).double(), theirs(x.double()), **TOL[torch.float32])
    torch.testing.assert_close(ours.running_mean.double(), theirs.running_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_var.double(), theirs.running_var, atol=1e-5, rtol=1e-5)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, device=device)
    torch.testing.assert_close(ours(x).double(), theirs(x.double()), **TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_module_options_and_mixed_precision(device):
    x = torch.randn(4, 3, 5, 5, device=device, dtype=torch.bfloat16)
    for kwargs in (dict(affine=False), dict(track_running_stats=False), dict(affine=False, track_running_stats=False)):
        ours = norm_ext.nn.BatchNorm2d(3, device=device, **kwargs)
        theirs = torch.nn.BatchNorm2d(3, device=device, dtype=torch.float64, **kwargs)
        for train in (True, False):
            ours.train(train)
            theirs.train(train)
            out = ours(x)
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out.double(), theirs(x.double()), **TOL[torch.bfloat16])


@pytest.mark.parametrize("device", DEVICES)
def test_masked_batch_norm(device):
    torch.manual_seed(1)
    bn = norm_ext.nn.MaskedBatchNorm1d(6, device=device)
    running = bn.running_mean.double().cpu(), bn.running_var.double().cpu()
    for _ in range(2):
        x = torch.randn(3, 7, 6, device=device).requires_grad_()
        pad_mask = torch.rand(3, 7, device=device) < 0.4
        pad_mask[0] = True  # a sequence that is all padding
        out = bn(x, pad_mask)
        grad = torch.randn_like(out)
        dx, dw, db = _grads(out, (x, bn.weight, bn.bias), grad)
        x64 = x.detach().double().cpu().requires_grad_()
        w64 = bn.weight.detach().double().cpu().requires_grad_()
        b64 = bn.bias.detach().double().cpu().requires_grad_()
        expected, *running = ref.masked_batch_norm(x64, pad_mask.cpu(), *running, w64, b64)
        edx, edw, edb = _grads(expected, (x64, w64, b64), grad.double().cpu())
        torch.testing.assert_close(out.double().cpu(), expected, **TOL[torch.float32])
        torch.testing.assert_close(dx.double().cpu(), edx, **TOL[torch.float32])
        torch.testing.assert_close(dw.double().cpu(), edw, **PARAM_TOL[torch.float32])
        torch.testing.assert_close(db.double().cpu(), edb, **PARAM_TOL[torch.float32])
        assert torch.all(out[pad_mask] == 0) and torch.all(dx[pad_mask] == 0)
    torch.testing.assert_close(bn.running_mean.double().cpu(), running[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var.double().cpu(), running[1], atol=1e-5, rtol=1e-5)
    # An all-padding batch: output 0, no NaN, running stats unchanged.
    before = bn.running_mean.clone(), bn.running_var.clone()
    out = bn(torch.randn(2, 3, 6, device=device), torch.ones(2, 3, dtype=torch.bool, device=device))
    assert torch.all(out == 0)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    bn.eval()
    x = torch.randn(2, 4, 6, device=device)
    mask = torch.tensor([[False, False, True, True], [False, True, True, True]], device=device)
    expected, _, _ = ref.masked_batch_norm(
        x.cpu(),
        mask.cpu(),
        bn.running_mean.cpu(),
        bn.running_var.cpu(),
        bn.weight.detach().cpu(),
        bn.bias.detach().cpu(),
        training=False,
    )
    torch.testing.assert_close(bn(x, mask).double().cpu(), expected, **TOL[torch.float32])


def test_sync_batch_norm_without_process_group_is_batch_norm():
    sync = norm_ext.nn.SyncBatchNorm(4)
    plain = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(sync(x).double(), plain(x.double()), **TOL[torch.float32])
    torch.testing.assert_close(sync.running_var.double(), plain.running_var, atol=1e-6, rtol=1e-5)


def test_convert_and_revert_sync_batchnorm():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Sequential(torch.nn.BatchNorm1d(4, momentum=None))
    ).double()
    model[1].weight.requires_grad_(False)
    model.eval()
    weight, running_var = model[1].weight, model[1].running_var
    synced = norm_ext.convert_sync_batchnorm(model)
    assert isinstance(synced[1], norm_ext.nn.SyncBatchNorm) and isinstance(synced[2][0], norm_ext.nn.SyncBatchNorm)
    assert synced[1].weight is weight and synced[1].running_var is running_var
    assert not synced[1].weight.requires_grad and not synced[1].training and synced[2][0].momentum is None
    assert synced[1].weight.dtype == torch.float64 and synced[1].num_batches_tracked is not None
    # State dicts are interchangeable with torch.nn.SyncBatchNorm's.
    torch_synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Sequential(torch.nn.BatchNorm1d(4))
        )
    ).double()
    torch_synced.load_state_dict(synced.state_dict())
    synced.load_state_dict(torch_synced.state_dict())
    reverted = norm_ext.revert_sync_batchnorm(synced)
    assert isinstance(reverted[1], norm_ext.nn.BatchNormNd) and reverted[1].weight is weight
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(reverted[:2](x), model[:2](x))


def test_no_host_sync_on_the_hot_path(monkeypatch):
    calls = []

    def forbid(name):
        def hook(self, *args, **kwargs):
            calls.append(name)
            raise AssertionError(f"host read via Tensor.{name}")

        return hook

    bn = norm_ext.nn.BatchNorm2d(4, momentum=None)
    masked = norm_ext.nn.MaskedBatchNorm1d(4, momentum=None)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    seq = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.rand(2, 5) < 0.5
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbid(name))
    (bn(x).sum() + masked(seq, mask).sum()).backward()
    monkeypatch.undo()
    assert calls == []


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    x = torch.randn(4, 3, 5, device=device)
    with pytest.raises(ValueError, match=r"weight must have shape \[3\]"):
        norm_ext.batch_norm(x, None, None, torch.ones(4, device=device), training=True)
    with pytest.raises(ValueError, match=r"running_mean must have shape \[3\]"):
        norm_ext.batch_norm(x, torch.zeros(2, device=device), torch.ones(3, device=device))
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        norm_ext.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm_ext.batch_norm(torch.randn(1, 3, device=device), None, None, training=True)
    with pytest.raises(ValueError, match="eps must be a finite non-negative number"):
        norm_ext.batch_norm(x, None, None, training=True, eps=-1.0)
    with pytest.raises(TypeError, match="input must be float32"):
        norm_ext.batch_norm(x.long(), None, None, training=True)
    with pytest.raises(ValueError, match=r"expected 4D input"):
        norm_ext.nn.BatchNorm2d(3, device=device)(x)
    masked = norm_ext.nn.MaskedBatchNorm1d(5, device=device)
    with pytest.raises(ValueError, match=r"pad_mask must have shape \(B, T\)"):
        masked(torch.randn(2, 3, 5, device=device), torch.zeros(2, 4, dtype=torch.bool, device=device))
    with pytest.raises(TypeError, match="pad_mask must be a bool tensor"):
        masked(torch.randn(2, 3, 5, device=device), torch.zeros(2, 3, device=device))
    with pytest.raises(ValueError, match="expected 5 channels"):
        masked(torch.randn(2, 3, 4, device=device))
    # The ops check their own inputs too.
    with pytest.raises(ValueError, match="pad_mask must have shape"):
        torch.ops.norm_ext.batch_norm_stats(
            torch.randn(4, 3, device=device), torch.zeros(5, dtype=torch.bool, device=device)
        )
    with pytest.raises(ValueError, match="mean must have shape"):
        torch.ops.norm_ext.batch_norm_elemt(x, torch.zeros(2, device=device), torch.ones(3, device=device), None, None)
    with pytest.raises(ValueError, match="eps must be a finite non-negative number"):
        torch.ops.norm_ext.batch_norm_train(x, None, None, -1e-5)
    with pytest.raises(ValueError, match="bias must have shape"):
        torch.ops.norm_ext.batch_norm_train(x, None, torch.zeros(4, device=device), 1e-5)
    with pytest.raises(ValueError, match="grad_out has shape"):
        torch.ops.norm_ext.batch_norm_train_backward(x[:2], x, x[0, :, 0], x[0, :, 0], None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", [None, torch.channels_last])
def test_opcheck(device, fmt):
    x = _make_input((3, 4, 5, 6), fmt, torch.float32, device)
    rows = torch.randn(10, 4, device=device)
    mask = torch.rand(10, device=device) < 0.3
    mean, invstd = torch.randn(4, device=device), torch.rand(4, device=device) + 0.5
    w, b = torch.randn(4, device=device), torch.randn(4, device=device)
    ops = torch.ops.norm_ext
    cases = [
        (ops.batch_norm_stats.default, (x,)),
        (ops.batch_norm_stats.default, (rows, mask)),
        (ops.batch_norm_train.default, (x, w, b, 1e-5)),
        (ops.batch_norm_train.default, (rows, None, None, 0.0)),
        (ops.batch_norm_train.default, (x, w, b, 1e-5, torch.randn(4, device=device), invstd.clone(), 0.3)),
        (ops.batch_norm_train.default, (rows, w.clone().requires_grad_(), b, 1e-5, None, invstd.clone(), 1.0)),
        (ops.batch_norm_train_backward.default, (torch.randn_like(x), x, mean, invstd, w)),
        (ops.batch_norm_train_backward.default, (torch.randn_like(rows), rows, mean, invstd, None)),
        (ops.batch_norm_elemt.default, (x, mean, invstd, w, b)),
        (ops.batch_norm_elemt.default, (rows, mean, invstd, None, None, mask)),
        (ops.batch_norm_elemt.default, (x.clone().requires_grad_(), mean, invstd, w.clone().requires_grad_(), b)),
        (ops.batch_norm_backward_reduce.default, (torch.randn_like(x), x, mean, invstd)),
        (ops.batch_norm_backward_elemt.default, (torch.randn_like(x), x, mean, invstd, w, mean, invstd)),
        (ops.batch_norm_backward_elemt.default, (torch.randn_like(rows), rows, mean, invstd, None, None, None, mask)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


class _AllBatchNorms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = norm_ext.nn.BatchNorm2d(4, momentum=None)
        self.sync = norm_ext.nn.SyncBatchNorm(4)
        self.masked = norm_ext.nn.MaskedBatchNorm1d(4)

    def forward(self, x, seq, mask):
        return self.sync(self.bn(x)).sum() + self.masked(seq, mask).square().sum()


def test_torch_compile_fullgraph():
    eager, compiled = _AllBatchNorms(), _AllBatchNorms()
    compiled.load_state_dict(eager.state_dict())
    compiled_fn = torch.compile(compiled, fullgraph=True)
    x = torch.randn(3, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    seq, mask = torch.randn(2, 6, 4), torch.rand(2, 6) < 0.3
    for _ in range(2):
        xs = [x.clone().requires_grad_() for _ in range(2)]
        seqs = [seq.clone().requires_grad_() for _ in range(2)]
        eager(xs[0], seqs[0], mask).backward()
        compiled_fn(xs[1], seqs[1], mask).backward()
        torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(seqs[1].grad, seqs[0].grad, atol=1e-5, rtol=1e-4)
    for name, buf in eager.named_buffers():
        torch.testing.assert_close(dict(compiled.named_buffers())[name], buf)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_odd_channels_large_spatial(device):
    # C = 65 is not a multiple of the CUDA kernels' 32-channel column blocks nor of the CPU vector
    # width; H*W is large enough for many row splits / blocks.
    x = torch.randn(2, 65, 96, 96, device=device).contiguous(memory_format=torch.channels_last) * 2 + 3
    x.requires_grad_()
    weight = torch.randn(65, device=device, requires_grad=True)
    out = norm_ext.batch_norm(x, None, None, weight, None, True)
    grad = torch.randn_like(out)
    dx, dw = _grads(out, (x, weight), grad)
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    expected, _, _ = ref.batch_norm(x64, None, None, w64, None, True)
    edx, edw = _grads(expected, (x64, w64), grad.double())
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dx.double(), edx, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dw.double(), edw, atol=5e-2, rtol=1e-4)


# The training op's paths on CPU: a channels-first channel normalized while it is in cache (enough
# channels for the threads, a channel small enough), and statistics then normalization over the
# whole input otherwise (one channel; a channel larger than a thread's share of any last-level
# cache; channels-last and (N, C) input).
TRAIN_OP_CASES = [
    ((5, 6, 7, 9), None, 2.0),
    ((5, 1, 7, 9), None, 2.0),
    ((4, 6, 9), None, 1e3),
    ((3, 6, 5, 7), torch.channels_last, 2.0),
    ((33, 6), None, 1e3),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,fmt,offset", TRAIN_OP_CASES)
def test_train_op_paths(threads, dtype, shape, fmt, offset):
    _check_train_op(threads, dtype, shape, fmt, offset)


@pytest.mark.parametrize("threads", [1, 2])
def test_train_op_channel_larger_than_cache(threads):
    # 16.8 MB a channel: more than half of the largest last-level cache the kernels assume (32 MiB).
    _check_train_op(threads, torch.float32, (1, 2, 4100, 1024), None, 2.0)


def _check_train_op(threads, dtype, shape, fmt, offset):
    channels = shape[1]
    x = _make_input(shape, fmt, dtype, "cpu", offset=offset, scale=3.0)
    weight, bias = torch.randn(channels), torch.randn(channels)
    grad = torch.randn_like(x)
    ops = torch.ops.norm_ext
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, mean, m2, invstd = ops.batch_norm_train(x, weight, bias, 1e-5)
        out_plain, _, _, _ = ops.batch_norm_train(x, None, None, 1e-5)
        dx, sum_dy, sum_dy_xhat = ops.batch_norm_train_backward(grad, x, mean, invstd, weight)
        dx_plain, _, _ = ops.batch_norm_train_backward(grad, x, mean, invstd, None)
    finally:
        torch.set_num_threads(previous)
    x64 = x.double()
    dims = tuple(d for d in range(x.dim()) if d != 1)
    count = x.numel() // channels
    exp_mean = x64.mean(dim=dims)
    exp_var = x64.var(dim=dims, unbiased=False)
    stat_tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-6 * offset, rtol=1e-5)
    torch.testing.assert_close(mean.double(), exp_mean, **stat_tol)
    torch.testing.assert_close(m2.double() / count, exp_var, atol=stat_tol["atol"], rtol=1e-4)
    torch.testing.assert_close(invstd.double(), (exp_var + 1e-5).rsqrt(), atol=0, rtol=1e-4)
    x64.requires_grad_()
    w64, b64 = weight.double().requires_grad_(), bias.double().requires_grad_()
    expected, _, _ = ref.batch_norm(x64, None, None, w64, b64, True)
    expected_plain, _, _ = ref.batch_norm(x64, None, None, None, None, True)
    assert out.stride() == x.stride() and out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, **TOL[dtype])
    torch.testing.assert_close(out_plain.double(), expected_plain, **TOL[dtype])
    edx, edw, edb = _grads(expected, (x64, w64, b64), grad.double())
    (edx_plain,) = _grads(expected_plain, (x64,), grad.double())
    assert dx.stride() == x.stride() and dx.dtype == dtype
    torch.testing.assert_close(dx.double(), edx, **TOL[dtype])
    torch.testing.assert_close(dx_plain.double(), edx_plain, **TOL[dtype])
    torch.testing.assert_close(sum_dy_xhat.double(), edw, **PARAM_TOL[dtype])
    torch.testing.assert_close(sum_dy.double(), edb, **PARAM_TOL[dtype])


def test_train_op_empty_input():
    empty = torch.randn(0, 3, 4)
    out, mean, m2, invstd = torch.ops.norm_ext.batch_norm_train(empty, None, None, 0.25)
    assert out.shape == (0, 3, 4)
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(m2, torch.zeros(3))
    torch.testing.assert_close(invstd, torch.full((3,), 2.0))
    dx, sum_dy, sum_dy_xhat = torch.ops.norm_ext.batch_norm_train_backward(empty, empty, mean, invstd, None)
    assert dx.shape == (0, 3, 4)
    assert torch.equal(sum_dy, torch.zeros(3)) and torch.equal(sum_dy_xhat, torch.zeros(3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_weight,with_bias,input_grad", [(True, False, True), (False, True, True),
                                                              (True, True, False), (False, True, False)])  # fmt: skip
def test_training_grads_for_each_parameter_subset(with_weight, with_bias, input_grad, device):
    # The C++ autograd of batch_norm_train indexes its inputs' gradients by the tensors passed: every
    # subset of (input, weight, bias) gets exactly the gradients it asks for.
    x = (torch.randn(6, 5, 7, device=device) * 2 + 1).requires_grad_(input_grad)
    w = torch.randn(5, device=device, requires_grad=True) if with_weight else None
    b = torch.randn(5, device=device, requires_grad=True) if with_bias else None
    out = norm_ext.batch_norm(x, None, None, w, b, True)
    leaves = [t for t in (x, w, b) if t is not None and t.requires_grad]
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    leaves64 = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None for t in (x, w, b)]
    expected, _, _ = ref.batch_norm(leaves64[0], None, None, leaves64[1], leaves64[2], True)
    expected_grads = torch.autograd.grad(
        expected, [t for t in leaves64 if t is not None and t.requires_grad], grad.double()
    )
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g.double(), e, atol=1e-4, rtol=1e-4)
