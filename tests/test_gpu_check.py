"""benchmarks/gpu_check.py: the CPU mode (no GPU here) runs every check's code path at tiny sizes
and reaches real outcomes (compiled == eager, bf16 loss ~ fp32, greedy tokens equal across two
decoding paths, FSDP == plain training); its FLOP count equals torch's FlopCounterMode; the peak
table and the memory-based sizing behave."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from lightning_musicgen.flops import codec_train_flops, lm_forward_flops, lm_train_flops, peak_bf16_tflops

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
EXPECTED_CHECKS = {"sdpa_training", "sdpa_decoding", "lm_bf16_vs_fp32/small", "lm_bf16_vs_fp32/medium",
                   "xformers_vs_sdpa", "compile_vs_eager", "codec_gan_step/fp32", "codec_gan_step/bf16",
                   "fsdp_vs_plain", "generation_greedy_equal", "generation_speed"}
EXPECTED_MEASUREMENTS = {"lm_train/small/tokens_per_s", "lm_train/small/mfu", "lm_train/medium/tokens_per_s",
                         "lm_train/medium/mfu", "lm_train/small/transformers_tokens_per_s",
                         "lm_train/small/ours_vs_transformers", "lm_train/small_compiled/tokens_per_s",
                         "lm_train/small_compiled/mfu", "codec_train_step/fp32", "codec_train_step/bf16",
                         "codec_train_step/fp32/mfu", "codec_train_step/bf16/mfu",
                         "generation/batch1/ms_per_step", "generation/batch8/ms_per_step"}


sys.path.insert(0, str(SCRIPT.parent))  # the check's modules import each other as the script does
import gpu_check as gc  # noqa: E402
import gpu_check_setup as setup  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "report.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), "--max-seconds", "3600"],
                         capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    return res, json.loads(out.read_text())


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_cpu_mode_report_structure(run):
    res, report = run
    assert res.returncode == 0, res.stdout[-4000:]
    assert report["mode"] == "cpu-tiny" and "no CUDA GPU" in report["note"]
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["cpu"]
    assert "measured fp32 matmul on this CPU" in report["peak"]["label"] and report["peak"]["flops"] > 0
    from lightning_musicgen.precision import training_precision
    expected = training_precision("auto", "cpu")[0]  # 32-true on an AVX2-only CPU
    assert report["precision"].startswith(expected) and report["bf16"] == expected.startswith("bf16")
    checks = by_name(report)
    assert len(checks) == len(report["checks"]) and set(checks) == EXPECTED_CHECKS
    for c in report["checks"]:
        assert c["status"] in ("PASS", "SKIP"), (c["name"], c["figure"], c["error"])
        assert c["figure"] and c["error"] is None
    assert report["summary"] == {"PASS": sum(c["status"] == "PASS" for c in report["checks"]), "FAIL": 0,
                                 "SKIP": sum(c["status"] == "SKIP" for c in report["checks"])}
    assert {m["name"] for m in report["measurements"]} == EXPECTED_MEASUREMENTS
    for m in report["measurements"]:
        assert m["value"] is not None and math.isfinite(m["value"]) and m["value"] > 0, m
    # the printed table lists every check with its status
    for name, c in checks.items():
        assert any(line.startswith(name) and c["status"] in line for line in res.stdout.splitlines()), name


def test_cpu_mode_outcomes(run):
    _, report = run
    checks = by_name(report)
    for size in ("small", "medium"):
        v = checks[f"lm_bf16_vs_fp32/{size}"]["values"]
        assert checks[f"lm_bf16_vs_fp32/{size}"]["status"] == "PASS"
        assert v["relative_difference"] <= 1e-2 and v["grad_cosine"] >= 0.99 and v["loss_fp32"] > 0
        assert v["loss_fp32"] != v["loss_bf16"]  # bf16 really ran: rounding moves the loss a little
    compiled = checks["compile_vs_eager"]
    assert compiled["status"] == "PASS" and compiled["values"]["backend"] == "aot_eager"
    assert compiled["values"]["compiled_layers"] == report["sizes"]["small"]["layers"]
    tol, cos = (1e-2, 0.99) if report["bf16"] else (1e-4, 0.9999)
    assert compiled["values"]["relative_difference"] <= tol and compiled["values"]["grad_cosine"] >= cos
    gen = checks["generation_greedy_equal"]
    assert gen["status"] == "PASS" and gen["values"]["differ"] == 0 and gen["values"]["tokens"] > 0
    assert gen["values"]["sides"] == ["CPU (CpuDecodeKernels)", "CPU (plain torch kernels)"]
    fsdp = checks["fsdp_vs_plain"]["values"]
    assert checks["fsdp_vs_plain"]["status"] == "PASS" and fsdp["update_norm"] > 0
    assert fsdp["update_relative_difference"] <= 1e-3 and len(fsdp["losses_fsdp"]) == len(fsdp["losses_plain"]) >= 2
    for tag in ("fp32", "bf16"):
        v = checks[f"codec_gan_step/{tag}"]["values"]
        assert v["finite"] and v["updated"] == {"generator": True, "discriminator": True}
        assert "train/d_loss" in v["last_step"]  # the discriminator stepped
    assert checks["codec_gan_step/bf16"]["values"]["first_step_relative_difference_vs_fp32"] <= 0.1
    # which attention kernel ran, per call kind, in training and in cached decoding
    train, decode = checks["sdpa_training"]["values"], checks["sdpa_decoding"]["values"]
    assert set(train["seen"]) == {"self-attention", "cross-attention"}
    assert set(decode["seen"]) == {"self-attention (1 query, KV cache)", "cross-attention (1 query, KV cache)"}
    for label, forced in {**train["forced"], **decode["forced"]}.items():
        assert forced["math"] == "runs" and forced["memory-efficient"] == "no", label  # no CUDA kernels on CPU
    xf = checks["xformers_vs_sdpa"]
    try:
        import xformers  # noqa: F401
    except ImportError:
        assert xf["status"] == "SKIP" and "not installed" in xf["figure"]
    assert xf["values"]["xformers_calls"] is None  # counted only where the xformers kernel can run (CUDA)
    assert xf["values"]["comparison_ok"] and xf["values"]["logit_relative_difference"] == 0.0  # SDPA fallback on CPU
    speed = checks["generation_speed"]["values"]
    assert set(speed) == {"1", "8"} and all(v["valid_codes"] and v["steps"] > 1 for v in speed.values())


def test_mfu_is_config_flops_over_the_named_peak(run):
    _, report = run
    values = {m["name"]: m["value"] for m in report["measurements"]}
    for key in ("small", "medium"):
        size = report["sizes"][key]
        config = dict(n_q=size["n_q"], card=size["card"], dim=size["dim"], num_layers=size["layers"])
        steps = size["frames"] + size["n_q"] - 1  # delay pattern
        flops = lm_train_flops(config, size["batch"], steps, size["cond_len"])
        step_s = size["batch"] * size["frames"] * size["n_q"] / values[f"lm_train/{key}/tokens_per_s"]
        expected = 100 * flops / step_s / report["peak"]["flops"]
        assert values[f"lm_train/{key}/mfu"] == pytest.approx(expected, rel=1e-9)
    checks = by_name(report)
    for tag in ("fp32", "bf16"):  # the codec step: its generator's FLOPs from the codec config
        v = checks[f"codec_gan_step/{tag}"]["values"]
        flops = codec_train_flops(v["codec_config"], 2, v["samples"])  # tiny plan: batch 2
        assert v["flops_per_step"] == flops and v["samples"] == 3200  # batch 2 x 0.1 s at 32 kHz
        expected = 100 * flops / v["step_s"] / report["peak"]["flops"]
        assert values[f"codec_train_step/{tag}/mfu"] == pytest.approx(expected, rel=1e-9)


def test_flops_from_the_config_equal_torch_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    cpu = torch.device("cpu")
    size = setup.LMSize("t", 32, 4, 2, 2, 2, 10, card=64, cond_len=5)
    lm = setup.build_lm(size, cpu)
    codes, cond = setup.lm_batch(size, cpu, 2, 10)
    cond.cross.requires_grad_()  # in training the condition's projection is trained too
    steps = lm.pattern.num_steps(10)
    # the math backend: its matmuls are visible to the counter (the fused CPU kernel is not counted)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:
        lm(lm.shift_right(lm.pattern.build(codes, lm.special_token)), cond)
    assert forward.get_total_flops() == lm_forward_flops(lm.config, 2, steps, 5)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as train:
        lm.loss(codes, cond)[0].backward()
    assert train.get_total_flops() == lm_train_flops(lm.config, 2, steps, 5)


@pytest.mark.parametrize("name, label, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4), ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5), ("NVIDIA H200", "H200 SXM", 989.4),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0), ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("NVIDIA L40S", "L40S", 362.05), ("NVIDIA L4", "L4", 121.0), ("NVIDIA A10", "A10", 125.0),
    ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090", 165.2), ("NVIDIA A10G", None, None), ("Tesla T4", None, None),
])
def test_peak_table_matches_device_names(name, label, tflops):
    assert peak_bf16_tflops(name) == (None if label is None else (label, tflops))


def test_peak_override_and_sizes_scaled_to_gpu_memory():
    flops, label = gc.peak_decision(torch.device("cpu"), 123.0)
    assert flops == 123e12 and "--peak-tflops" in label
    small = setup.LMSize("small", 1024, 16, 24, 24, 8, 1500)
    medium = setup.LMSize("medium", 1536, 24, 48, 48, 8, 1500)
    h100 = setup.fit_size(small, 80), setup.fit_size(medium, 80)
    assert (h100[0].layers, h100[0].frames, h100[0].batch) == (24, 1500, 8)
    assert h100[1].layers == 48 and h100[1].frames == 1500 and 1 <= h100[1].batch < 8
    small24, medium24 = setup.fit_size(small, 24), setup.fit_size(medium, 24)
    assert small24.layers == 24 and small24.batch < 8
    assert medium24.layers < 48  # the optimizer state of 48 layers alone exceeds 24 GB
    for s, memory in ((h100[0], 80), (h100[1], 80), (small24, 24), (medium24, 24)):
        assert setup.train_gib(s, s.batch, s.frames, s.layers) <= 0.7 * memory
