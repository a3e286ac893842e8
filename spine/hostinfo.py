"""What a CPU result depends on: the processor, its vector instructions, torch's kernel choice.

CPU float results depend on the kernels torch picks for the processor (AVX2 or AVX-512 in ATen, MKL's
code path for matrix products): the same command, seed and thread count gives other bits on another
CPU (bench/cpu_bits.sh; docs/getting-started.md, "Processors"). Run records carry this so two runs can be compared.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["KERNEL_ENV", "host_info", "describe_host"]

# the environment variables that choose CPU kernels (read once, when torch / MKL / oneDNN start)
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def _cpuinfo(cpuinfo: str | Path) -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: the processor string is all there is
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags" and not flags:
            have = set(value.split())
            flags = [f for f in _FLAGS if f in have]
    return model, flags


def host_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The processor, its vector-instruction flags, torch's version and ATen CPU capability, the
    kernel-choosing environment variables that are set, and the GPU if there is one."""
    model, flags = _cpuinfo(cpuinfo)
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": model, "cpu_flags": flags, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
            "threads": os.environ.get("OMP_NUM_THREADS")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_host(info: dict, env: dict | None = None) -> str:
    """One line: `AMD EPYC (avx2), torch 2.13.0+cpu, ATen AVX2` plus the kernel settings in force
    (`env` = what a run adds for its commands, over the host's own)."""
    kernels = {**(info.get("kernel_env") or {}), **{k: v for k, v in (env or {}).items() if k in KERNEL_ENV}}
    flags = ", ".join(info.get("cpu_flags") or []) or "no avx2"
    cap = kernels.get("ATEN_CPU_CAPABILITY", info.get("cpu_capability", "?"))
    line = f"{info.get('cpu', '?')} ({flags}), torch {info.get('torch', '?')}, ATen {cap}"
    if "MKL_CBWR" in kernels:
        line += f", MKL_CBWR {kernels['MKL_CBWR']}"
    if info.get("gpu"):
        line += f", {info['gpu']}"
    return line
