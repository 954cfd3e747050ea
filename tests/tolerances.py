"""Per-dtype tolerances against float64 references, shared by the test modules.

The dominant error of a low-precision kernel that accumulates in fp32 is the final rounding of its
output, so the tolerances follow each dtype's unit roundoff; gradients that sum over many rows get a
looser relative bound.
"""

import torch

# dtype -> (rtol, atol) for values of magnitude about 1.
FORWARD = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 3.2e-2),
}
BACKWARD = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 8e-2),
}

# Memory-efficient mode recomputes x_hat = (y - b) / w from the output as stored, so the output's
# rounding reaches the gradients amplified by |y| / |w|.
MEMORY_EFFICIENT_BACKWARD = {
    torch.float64: (1e-8, 1e-8),
    torch.float32: (5e-4, 5e-4),
    torch.float16: (3e-2, 3e-2),
    torch.bfloat16: (1.5e-1, 2e-1),
}


def assert_close_to_reference(actual, expected, dtype, table=FORWARD, what=""):
    """Compare with a float64 reference; atol scales with the reference's magnitude."""
    rtol, atol = table[dtype]
    expected = expected.detach().to(torch.float64)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().to(torch.float64).cpu(),
        expected.cpu(),
        rtol=rtol,
        atol=atol * scale,
        msg=lambda m: f"{what}: {m}",
    )


def leaf(t, dtype=None):
    """A fresh autograd leaf holding t (cast to dtype if given), or None for None."""
    if t is None:
        return None
    return (t.detach() if dtype is None else t.detach().to(dtype)).requires_grad_(True)


def assert_grads_close_to_reference(y, y64, inputs, inputs64, dtype, names=("dx", "dweight", "dbias")):
    """Backpropagates one random dy through y and through its float64 reference y64, and compares the
    gradient of each input with that of its float64 twin. None inputs are skipped. Returns the grads."""
    kept = [(n, t, t64) for n, t, t64 in zip(names, inputs, inputs64) if t is not None]
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for _, t, _ in kept], dy)
    grads64 = torch.autograd.grad(y64, [t64 for _, _, t64 in kept], dy.double())
    for (name, t, _), g, g64 in zip(kept, grads, grads64):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert_close_to_reference(g, g64, dtype, BACKWARD, name)
    return grads
