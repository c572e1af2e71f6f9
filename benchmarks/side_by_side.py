"""Helpers the side-by-side benchmarks share: timing with device syncs, relative differences, gradient
cosines, and the machine record every figure in RESULTS.md carries.

    sync(device); time_steps(step, device, warmup, repeats) -> seconds per step (device-synced)
    relative(a, b) = |a - b| / max(|b|, tiny); grad_cosine(grads_of(m1), grads_of(m2)) over shared names
    machine_info(device) -> {python, torch, cuda, cpu (the lscpu model name), cores, ram_gib, library versions, gpu}
"""
from __future__ import annotations

import math
import os
import platform
import time

import torch



def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def grads_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().clone() for n, p in module.named_parameters() if p.grad is not None}


def grad_cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine similarity of two gradients given as {name: tensor} (all parameters as one vector)."""
    if set(a) != set(b):
        raise RuntimeError(f"gradients differ in which parameters they reach: {sorted(set(a) ^ set(b))[:4]}")
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in a)
    na = math.sqrt(sum(float(a[n].double().pow(2).sum()) for n in a))
    nb = math.sqrt(sum(float(b[n].double().pow(2).sum()) for n in b))
    return dot / max(na * nb, 1e-30)


def time_steps(step, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        with open("/proc/meminfo") as f:
            info["ram_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    for name in ("lightning", "transformers", "xformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}")
    return info
