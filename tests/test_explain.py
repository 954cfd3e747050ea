"""`python -m norm_ext explain`: the numbers for the seed example and the other norms."""

import importlib.util

import pytest

from norm_ext.__main__ import main
from norm_ext.explain import explain


def test_seed_example_gpt2_layer_norm():
    # 12 layers, 1024 tokens, 768 features: one (mean, std) pair per token, per norm.
    e = explain((8, 1024, 768), "layer", num_layers=12)
    assert e.reduced_dims == (2,)
    assert e.num_statistics == 8 * 1024
    assert e.statistics_per_sample == 1024
    assert e.per_sequence_total == 2 * 12 * 1024
    assert e.parameter_shapes == [("weight", (768,)), ("bias", (768,))]
    assert not e.depends_on_other_positions and e.depends_on_other_samples == "no"
    assert e.causal == "yes" and e.kv_cache_safe == "yes"
    text = e.render()
    assert "8,192 in total, 1,024 per sample" in text
    assert "2 x 12 x 1,024 = 24,576 per sample" in text


def test_rms_has_no_bias_and_no_mean():
    e = explain((8, 1024, 768), "rms")
    assert e.num_statistics == 8 * 1024 and e.parameter_shapes == [("weight", (768,))]
    assert "no mean" in e.statistic


@pytest.mark.parametrize("norm", ["batch", "masked_batch"])
def test_batch_norms_share_statistics_across_the_batch(norm):
    e = explain((8, 1024, 768), norm)
    assert e.reduced_dims == (0, 1) and e.num_statistics == 768
    assert e.depends_on_other_positions and e.depends_on_other_samples.startswith("yes in training")
    assert e.causal.startswith("no in training") and e.kv_cache_safe.startswith("in eval only")
    assert ("running_mean", (768,)) in e.buffer_shapes


def test_image_shapes_follow_torch_layout():
    bn = explain((32, 64, 56, 56), "batch")
    assert bn.channel_dim == 1 and bn.reduced_dims == (0, 2, 3) and bn.num_statistics == 64
    gn = explain((32, 64, 56, 56), "group", num_groups=8)
    assert gn.reduced_dims == (1, 2, 3) and gn.num_statistics == 32 * 8
    inst = explain((32, 64, 56, 56), "instance")
    assert inst.reduced_dims == (2, 3) and inst.num_statistics == 32 * 64
    ln = explain((32, 64, 56, 56), "layer")
    assert ln.reduced_dims == (1, 2, 3) and ln.num_statistics == 32
    power = explain((8, 128, 64), "power")
    assert power.num_statistics == 64 and power.parameter_shapes == [("weight", (64,))]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_groups"):
        explain((2, 6, 4), "group", num_groups=4, layout="channels_first")
    with pytest.raises(ValueError, match="norm must be one of"):
        explain((2, 6, 4), "weight")
    with pytest.raises(SystemExit):
        main(["explain", "--shape", "8,a,2", "--norm", "layer"])


def test_cli_prints_and_plots(tmp_path, capsys):
    plot = tmp_path / "cube.png"
    args = ["explain", "--shape", "8,1024,768", "--norm", "layer", "--layers", "12"]
    if importlib.util.find_spec("matplotlib") is not None:
        args += ["--plot", str(plot)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reduced axes: C (dim 2, size 768)" in out and "24,576" in out
    if "--plot" in args:
        assert plot.stat().st_size > 0
