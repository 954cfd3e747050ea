"""The benchmark harness end to end on the CPU (tiny sizes, one rep), and its correctness gate."""

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_simt

import norm_ext
from norm_ext import simt
from norm_ext.bench import Config, harness, run
from norm_ext.bench import __main__ as cli
from norm_ext.bench.cases import OPS, Variant, bytes_moved, make_case
from norm_ext.bench.providers import PROVIDER_FACTORIES, Provider
from norm_ext.bench.report import COLUMNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
# In-process runs keep glibc's defaults: the default --cpu-memory reused would change this process's
# allocator for good (test_cpu_memory_modes_are_run_and_recorded runs it in a child).
TINY = ["--device", "cpu", "--dtypes", "fp32", "--reps", "1", "--warmup", "0", "--min-time", "0"]
TINY += ["--cpu-memory", "fresh"]
# torch.compile is exercised on one op in its own test: compiling every op would take minutes on 2 cores.
NO_COMPILE = ",".join(p for p in PROVIDER_FACTORIES if p != "torch.compile")


def _run_cli(tmp_path, *args):
    out = tmp_path / "out"
    assert cli.main([*TINY, "--out", str(out), *args]) == 0
    with open(out / "results.json") as f:
        data = json.load(f)
    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    return out, data, csv_rows


def test_end_to_end_every_op_and_provider(tmp_path, capsys):
    sizes = "8x64,4x16x6x6,2x32x4x4"
    out, data, csv_rows = _run_cli(tmp_path, "--sizes", sizes, "--providers", NO_COMPILE, "--pass", "fwd,bwd,fwd+bwd")
    printed = capsys.readouterr().out
    meta, rows = data["meta"], data["results"]
    for key in ("device_name", "torch_version", "norm_ext_commit", "date", "cpu_threads", "accounting"):
        assert meta[key] not in (None, ""), key
    assert meta["cpu_isa"] == norm_ext.cpu_isa() and meta["cpu_isa"] in ("avx512", "avx2", "default")
    assert meta["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert data["schema_version"] == 2
    assert all(set(r) == set(COLUMNS) for r in rows)
    assert list(csv_rows[0]) == list(COLUMNS) and len(csv_rows) == len(rows)
    # Third-party libraries are CUDA-only or absent here: reported, never a crash.
    for name in ("apex", "liger", "quack", "transformer_engine", "flash_attn"):
        assert f"provider {name}: skipped" in printed
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["provider"] for r in ok} == {"norm_ext", "torch"}
    assert not [r for r in rows if r["status"] in ("WRONG", "error")], [r for r in rows if r["status"] != "ok"]
    assert {r["op"] for r in ok} == set(OPS)
    assert {r["pass"] for r in ok} == {"fwd", "bwd", "fwd+bwd"}
    for r in ok:
        assert r["ms"] > 0 and r["gbps"] > 0 and r["copy_gbps"] > 0 and r["copy_into_gbps"] > 0 and r["bytes"] > 0
        assert r["pct_copy"] == pytest.approx(100 * r["gbps"] / r["copy_gbps"])
        if r["provider"] == "torch":
            assert r["speedup_vs_torch"] == pytest.approx(1.0)
    if HAVE_MATPLOTLIB:
        assert any(name.startswith("layer_norm_fp32_fwd") for name in os.listdir(out / "plots"))
    else:
        assert "matplotlib is not installed" in printed


def test_torch_compile_provider(tmp_path):
    _, data, _ = _run_cli(tmp_path, "--ops", "layer_norm", "--pass", "fwd", "--sizes", "8x64", "--providers",
                          "norm_ext,torch,torch.compile", "--no-plots")  # fmt: skip
    statuses = {r["provider"]: r["status"] for r in data["results"]}
    assert statuses == {"norm_ext": "ok", "torch": "ok", "torch.compile": "ok"}
    assert data["meta"]["torch_compile_shapes"] == "dynamic"  # the CPU default


def test_compile_shapes_choice_reaches_torch_compile(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=None: seen.append(dynamic) or fn)
    for flag, expected in ((None, True), ("static", False), ("dynamic", True)):
        seen.clear()
        config = Config(ops=["rms_norm"], dtypes=["fp32"], sizes=[(4, 32)], passes=["fwd"], max_reps=1, warmup=0,
                        min_time_s=0, show_progress=False, providers=["torch.compile"],
                        compile_dynamic=None if flag is None else flag == "dynamic")  # fmt: skip
        meta, rows = run(config, log=lambda message: None)
        assert seen and set(seen) == {expected}, (flag, seen)
        assert meta["torch_compile_shapes"] == ("dynamic" if expected else "static")
        assert [r["status"] for r in rows] == ["ok"]


def test_stored_backward_survives_another_providers_running_stats_update(tmp_path):
    # torch's bf16 batch_norm saves the running stats for its backward; the bwd pass replays a stored
    # forward after norm_ext's forward has run, which must not touch the same running-stat tensors.
    _, data, _ = _run_cli(tmp_path, "--ops", "batch_norm", "--dtypes", "bf16", "--pass", "bwd", "--sizes",
                          "4x16x6x6", "--providers", "torch,norm_ext", "--no-plots")  # fmt: skip
    assert {(r["provider"], r["status"]) for r in data["results"]} == {("torch", "ok"), ("norm_ext", "ok")}


@needs_simt
def test_bench_on_the_simt_backend(tmp_path):
    # The GPU session's rehearsal: norm_ext's CUDA kernels (forward and backward) behind the bench's
    # checks, torch on the CPU beside them.
    ops = "layer_norm,rms_norm,batch_norm,group_norm"
    with simt.launch_log() as launches:
        _, data, _ = _run_cli(tmp_path, "--device", "simt", "--ops", ops, "--dtypes", "bf16", "--pass", "fwd,bwd",
                              "--sizes", "8x256,4x32x6x6", "--providers", "norm_ext,torch", "--no-plots")  # fmt: skip
    meta, rows = data["meta"], data["results"]
    assert meta["device"] == "simt" and meta["device_name"].startswith("SIMT host build")
    assert {r["status"] for r in rows} == {"ok"}, [r for r in rows if r["status"] != "ok"]
    assert {(r["op"], r["pass"]) for r in rows if r["provider"] == "norm_ext"} == {
        (op, p) for op in ops.split(",") for p in ("fwd", "bwd")
    }
    kernels = {launch.name for launch in launches}
    expected = {"row_norm_fwd", "row_norm_bwd", "reduce_channels_first_kernel", "reduce_channels_last_kernel",
                "affine_channels_first_kernel", "group_stats_kernel", "group_norm_grad_input_kernel"}  # fmt: skip
    assert {e for e in expected if any(name.startswith(e) for name in kernels)} == expected, sorted(kernels)


def _broken_layer_norm(x, shape, weight, bias, eps):
    return F.layer_norm(x, shape, weight, bias, eps) * 1.01


def _wrong_gradient_layer_norm(x, shape, weight, bias, eps):
    # The forward value is exact; the gradient of x gets an extra 0.5 * dy.
    return F.layer_norm(x, shape, weight, bias, eps) + 0.5 * (x - x.detach())


def test_wrong_provider_is_flagged_not_timed():
    providers = [
        Provider("torch", {"layer_norm": F.layer_norm}),
        Provider("broken", {"layer_norm": _broken_layer_norm}),
        Provider("bad_grad", {"layer_norm": _wrong_gradient_layer_norm}),
    ]
    config = Config(ops=["layer_norm"], dtypes=["fp32"], sizes=[(16, 32)], max_reps=1, warmup=0, min_time_s=0,
                    show_progress=False)  # fmt: skip
    _, rows = run(config, providers=providers, log=lambda message: None)
    status = {(r["provider"], r["pass"]): r for r in rows}
    for pass_name in ("fwd", "bwd", "fwd+bwd"):
        assert status[("torch", pass_name)]["status"] == "ok"
        wrong = status[("broken", pass_name)]
        assert wrong["status"] == "WRONG" and wrong["ms"] is None and "output error" in wrong["note"]
    assert status[("bad_grad", "fwd")]["status"] == "ok"
    for pass_name in ("bwd", "fwd+bwd"):
        wrong = status[("bad_grad", pass_name)]
        assert wrong["status"] == "WRONG" and wrong["ms"] is None and "grad input" in wrong["note"]


def test_copy_baseline_moves_the_bytes_in_activation_sized_blocks():
    clone, copy_into = harness.copy_fns("cpu", 5 * 1000, 1000)
    assert [t.numel() for t in clone()] == [1000, 1000, 500]
    assert copy_into() is None
    assert [t.numel() for t in harness.copy_fns("cpu", 600, 1000)[0]()] == [300]


def test_byte_accounting():
    case = make_case("layer_norm", Variant("default"), (8, 64), torch.float32, "cpu")
    x, params = 8 * 64 * 4, 2 * 64 * 4
    assert bytes_moved(case, "fwd") == 2 * x + params
    assert bytes_moved(case, "bwd") == 3 * x + 2 * params
    assert bytes_moved(case, "fwd+bwd") == 5 * x + 3 * params
    fused = make_case("add_rms_norm", Variant("default"), (8, 64), torch.bfloat16, "cpu")
    assert bytes_moved(fused, "fwd") == 4 * 8 * 64 * 2 + 64 * 2


def test_bad_arguments_name_the_problem(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--ops", "no_such_norm", "--device", "cpu"])
    assert "unknown op 'no_such_norm'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--sizes", "12xq"])
    assert "integers joined by 'x'" in capsys.readouterr().err


def test_cpu_memory_modes_are_run_and_recorded(tmp_path):
    # The default, reused, calls mallopt, which changes the whole process for good: a child process.
    out = tmp_path / "out"
    args = ["--ops", "rms_norm", "--sizes", "8x64", "--providers", "norm_ext,torch", "--no-plots"]
    subprocess.run(
        [sys.executable, "-m", "norm_ext.bench", *TINY[:-2], *args, "--out", str(out)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    with open(out / "results.json") as f:
        data = json.load(f)
    assert data["meta"]["cpu_memory"] == "reused"
    assert {r["status"] for r in data["results"]} == {"ok"}
    _, fresh, _ = _run_cli(tmp_path, *args)
    assert fresh["meta"]["cpu_memory"] == "fresh"


def test_make_tables(tmp_path):
    args = ["--ops", "layer_norm,rms_norm", "--sizes", "8x64", "--providers", "norm_ext,torch", "--no-plots"]
    out, data, _ = _run_cli(tmp_path, *args)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "make_tables.py"), str(out / "results.json")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "### layer_norm fwd" in result.stdout and "### rms_norm fwd+bwd" in result.stdout
    assert "% of copy" in result.stdout
    summary = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "make_tables.py"), str(out / "results.json"), "--summary"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert summary[0].startswith("| op | dtype | shape | pass | norm_ext")
    assert len(summary) == 2 + sum(1 for r in data["results"] if r["provider"] == "norm_ext")


def test_large_row_norm_cases_are_checked_on_their_first_rows(monkeypatch):
    monkeypatch.setattr(harness, "CHECK_MAX_ELEMENTS", {"cuda": 64, "cpu": 64})
    case = make_case("rms_norm", Variant("default"), (16, 32), torch.float32, "cpu")
    small, grad_out = harness.checkable_case(case)
    assert small.shape == (2, 32) and grad_out.shape == (2, 32)
    fits = make_case("rms_norm", Variant("default"), (2, 32), torch.float32, "cpu")
    assert harness.checkable_case(fits)[0] is fits


def test_overhead_section(tmp_path, capsys):
    # Host time per call: every case in every mode, torch and norm_ext side by side; the CLI writes
    # the table. (What the times are is the bench's business, not a test's.)
    assert cli.main(["--overhead", "--device", "cpu", "--reps", "20", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "overhead.csv") as f:
        rows = list(csv.DictReader(f))
    from norm_ext.bench import overhead

    assert len(rows) == len(overhead.CASES) * len(overhead.MODES)
    for r in rows:
        assert float(r["torch_us"]) > 0 and float(r["norm_ext_us"]) > 0 and float(r["torch_ops_aten_us"]) > 0
        assert float(r["ratio"]) == pytest.approx(float(r["norm_ext_us"]) / float(r["torch_us"]), rel=1e-6)
    table = (tmp_path / "overhead.md").read_text()
    assert "| LayerNorm 1x768 | fwd+bwd |" in table and "BatchNorm2d 2x8x4x4" in table
    assert "norm_ext / torch" in capsys.readouterr().out


def test_overhead_cases_compute_what_torch_computes(monkeypatch):
    # measure() refuses to time a norm_ext module whose output differs from torch's.
    from norm_ext.bench import overhead

    case = overhead.Case(
        "wrong",
        (2, 8),
        lambda: torch.nn.LayerNorm(8),
        lambda: norm_ext.nn.LayerNorm(8, eps=1.0),
        lambda: overhead._AtenLayerNorm(8),
    )
    monkeypatch.setattr(overhead, "CASES", [case])
    with pytest.raises(AssertionError):
        overhead.measure("cpu", calls=10, rounds=1)
