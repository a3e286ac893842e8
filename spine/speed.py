"""Optional training fast paths. Each one falls back to the pure-PyTorch reference when it cannot run.

- `float8_linears`: train `nn.Linear` layers with float8 matmuls (torchao's float8 training, dynamic
  tensorwise scaling: e4m3 for activations and weights, e5m2 for gradients). Needs the `torchao` extra
  and a GPU with float8 tensor cores (compute capability 8.9+: Ada, Hopper, Blackwell); elsewhere the
  model is left as it is and the reason is returned. Parameter names do not change, so checkpoints
  and exports are the same files.
- `compiler_tuning`: inductor's coordinate-descent tuning of its generated kernels (block sizes of
  the fused elementwise/norm/cross-entropy kernels), a global switch that costs compile time.

Measured in bench/RESULTS.md; tested against the reference in tests/test_speed.py.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn


def _import_float8():
    """torchao's float8 training API, or the one-line reason it cannot be imported.

    torchao logs a line per optional compiled extension it cannot load, and torch a deprecation line
    for one of torchao's registrations (both harmless for float8 training, which is pure PyTorch);
    they are silenced during the import so that what the user sees is spine's one line.
    """
    logs = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except Exception as exc:  # ImportError, or a torchao built for another torch
        return None, f"torchao is not importable ({type(exc).__name__}: {exc}); pip install -e '.[fast]'"
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)
    return (Float8LinearConfig, convert_to_float8_training), None


def _float8_hardware(device: torch.device | str | None = None) -> str | None:
    """None when this machine has float8 tensor cores, else one line saying why not."""
    if not torch.cuda.is_available():
        return "no CUDA device (float8 matmuls need a GPU of compute capability 8.9 or newer)"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        return f"GPU compute capability {cap[0]}.{cap[1]} has no float8 tensor cores (needs 8.9 or newer)"
    return None


def float8_support(device: torch.device | str | None = None) -> str | None:
    """None when float8 training can run here, else one line saying why not (hardware first, then torchao)."""
    return _float8_hardware(device) or _import_float8()[1]


def float8_linears(model: nn.Module, *, skip: tuple[str, ...] = ("lm_head",), emulate: bool = False
                   ) -> tuple[list[str], str | None]:
    """Swap the model's `nn.Linear` layers for torchao `Float8Linear` in place.

    Layers named in `skip` (by their last name part) and layers whose sizes are not multiples of 16
    (a float8 matmul requirement) stay in bf16/fp32; a token count that is not a multiple of 16 is
    padded inside the matmul (`pad_inner_dim`). `emulate=True` runs the float8 casts with
    higher-precision matmuls, so the conversion can be tested on a CPU.
    Returns (names of converted layers, None), or ([], reason) when nothing was converted because
    float8 training cannot run here.
    """
    reason = None if emulate else _float8_hardware()
    if reason is not None:
        return [], reason
    api, reason = _import_float8()
    if reason is not None:
        return [], reason
    Float8LinearConfig, convert_to_float8_training = api
    converted: list[str] = []

    def keep(mod: nn.Module, fqn: str) -> bool:
        if not isinstance(mod, nn.Linear) or fqn.rsplit(".", 1)[-1] in skip:
            return False
        if mod.in_features % 16 or mod.out_features % 16:
            return False
        converted.append(fqn)
        return True

    before = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    config = Float8LinearConfig(emulate=emulate, pad_inner_dim=True)
    convert_to_float8_training(model, config=config, module_filter_fn=keep)
    after = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    if after != before:  # a swap that renamed parameters would break checkpoints: refuse it loudly
        raise RuntimeError(f"float8_linears changed parameter names: {sorted(after ^ before)[:4]}")
    return converted, None


def compiler_tuning(coordinate_descent: bool = True) -> None:
    """Turn inductor's coordinate-descent tuning of generated kernels on or off (process-wide)."""
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = coordinate_descent
