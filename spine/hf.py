"""Hugging Face interop: import GPT-2 / Qwen3 checkpoints into a `GPT`, export back.

Import reads `config.json` plus `model.safetensors`, sharded safetensors (with
`model.safetensors.index.json`) or `pytorch_model.bin` through `torch.load(weights_only=True)`
only (never arbitrary unpickling). Tensors are copied one at a time into a model materialised from
the meta device, so peak memory is one model plus one tensor. Export writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained` loads.

Qwen3's `attention_bias` puts a bias on q/k/v *and* o_proj but never on the MLP; spine's `bias`
switch covers attention output and MLP together. Import therefore sets `bias=True` with zero MLP
biases, and export refuses a model whose MLP biases are non-zero (HF Qwen3 has nowhere to put them).

The tokenizer beside a checkpoint (reading it, writing transformers' files) is `spine.hf_tokenizer`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .checkpoint import empty_model, read_safetensors
from .config import ModelConfig
from .model import GPT
# the tokenizer half lives in spine.hf_tokenizer; re-exported so `from spine.hf import ...` keeps working
from .hf_tokenizer import (check_hf_tokenizer, gpt2_from_tokenizer_json, import_hf_tokenizer,  # noqa: F401
                           write_hf_tokenizer)

SUPPORTED = ("gpt2", "qwen3")
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}

__all__ = ["import_hf", "import_hf_tokenizer", "export_hf", "config_from_hf", "config_to_hf", "parse_dtype", "SUPPORTED"]


# ---------------------------------------------------------------------------- configs
def _get(hf: dict, key: str, default: Any = ...) -> Any:
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is ...:
        raise ValueError(f"HF config ({hf.get('model_type')}) lacks required key {key!r}")
    return default


def config_from_hf(hf_config: dict) -> ModelConfig:
    """`ModelConfig` for a HF GPT-2 or Qwen3 `config.json` (as a dict); unsupported options raise."""
    mt = hf_config.get("model_type")
    extra = {"hf": {k: hf_config[k] for k in ("model_type", "bos_token_id", "eos_token_id", "pad_token_id")
                    if hf_config.get(k) is not None}}
    if mt == "gpt2":
        act = hf_config.get("activation_function", "gelu_new")
        if act not in _GELU_TANH:
            raise ValueError(f"HF GPT-2 activation_function {act!r} is not supported (spine uses tanh GELU: "
                             f"{_GELU_TANH})")
        for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False),
                        ("scale_attn_weights", True)):
            if hf_config.get(key, ok) != ok:
                raise ValueError(f"HF GPT-2 option {key}={hf_config[key]!r} is not supported")
        d = _get(hf_config, "n_embd")
        return ModelConfig(
            vocab_size=_get(hf_config, "vocab_size"), context_length=_get(hf_config, "n_positions"), d_model=d,
            n_layer=_get(hf_config, "n_layer"), n_head=_get(hf_config, "n_head"),
            d_ff=hf_config.get("n_inner") or 4 * d, pos_emb="learned", norm="layernorm",
            norm_eps=float(hf_config.get("layer_norm_epsilon", 1e-5)), mlp="gelu", qk_norm=False,
            qkv_bias=True, bias=True, tie_embeddings=bool(hf_config.get("tie_word_embeddings", True)),
            name=str(hf_config.get("_name_or_path") or "hf-gpt2"), family="gpt2", extra=extra)
    if mt == "qwen3":
        act = hf_config.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"HF Qwen3 hidden_act {act!r} is not supported (only 'silu')")
        if hf_config.get("use_sliding_window"):
            raise ValueError("HF Qwen3 use_sliding_window=true is not supported (spine attends to the full context)")
        rope = hf_config.get("rope_parameters") or {}
        scaling = hf_config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type != "default":
            raise ValueError(f"HF Qwen3 rope type {rope_type!r} is not supported (only plain RoPE)")
        theta = hf_config.get("rope_theta") or rope.get("rope_theta") or 10000.0
        attn_bias = bool(hf_config.get("attention_bias", False))
        n_head = _get(hf_config, "num_attention_heads")
        d = _get(hf_config, "hidden_size")
        return ModelConfig(
            vocab_size=_get(hf_config, "vocab_size"), context_length=_get(hf_config, "max_position_embeddings"),
            d_model=d, n_layer=_get(hf_config, "num_hidden_layers"), n_head=n_head,
            n_kv_head=hf_config.get("num_key_value_heads") or n_head,
            head_dim=hf_config.get("head_dim") or d // n_head, d_ff=_get(hf_config, "intermediate_size"),
            pos_emb="rope", rope_theta=float(theta), norm="rmsnorm",
            norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)), mlp="swiglu", qk_norm=True,
            qkv_bias=attn_bias, bias=attn_bias, tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
            name=str(hf_config.get("_name_or_path") or "hf-qwen3"), family="qwen3", extra=extra)
    raise ValueError(f"unsupported HF model_type {mt!r}; supported: {', '.join(SUPPORTED)}")


def _family(cfg: ModelConfig) -> str:
    """Which HF architecture can represent `cfg`, or a ValueError saying why none can."""
    gpt2 = dict(pos_emb="learned", norm="layernorm", mlp="gelu", qk_norm=False)
    qwen3 = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True)
    for name, want in (("gpt2", gpt2), ("qwen3", qwen3)):
        if all(getattr(cfg, k) == v for k, v in want.items()):
            if name == "gpt2" and (cfg.n_kv_head != cfg.n_head or cfg.head_dim * cfg.n_head != cfg.d_model):
                raise ValueError("HF GPT-2 needs n_kv_head == n_head and head_dim == d_model / n_head; "
                                 f"this model has n_kv_head={cfg.n_kv_head}, head_dim={cfg.head_dim}")
            return name
    have = {k: getattr(cfg, k) for k in gpt2}
    raise ValueError(f"no supported HF architecture matches this model ({have}); supported: "
                     f"gpt2 {gpt2}, qwen3 {qwen3}")


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype | None = None) -> dict:
    """HF `config.json` contents (model_type gpt2 or qwen3) for a spine config."""
    fam = _family(cfg)
    ids = dict(cfg.extra.get("hf", {})) if isinstance(cfg.extra.get("hf"), dict) else {}

    def in_vocab(v: Any) -> bool:
        return all(isinstance(i, int) and 0 <= i < cfg.vocab_size for i in (v if isinstance(v, list) else [v]))

    # special-token ids recorded at import; ids outside this model's vocab would make HF warn
    ids = {k: v for k, v in ids.items() if k == "model_type" or in_vocab(v)}
    out: dict[str, Any]
    if fam == "gpt2":
        eos = ids.get("eos_token_id", 50256 if cfg.vocab_size == 50257 else None)
        out = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
               "n_positions": cfg.context_length, "n_ctx": cfg.context_length, "n_embd": cfg.d_model,
               "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff,
               "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
               "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
               "tie_word_embeddings": cfg.tie_embeddings,
               "bos_token_id": ids.get("bos_token_id", eos), "eos_token_id": eos}
    else:
        out = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": cfg.vocab_size,
               "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layer,
               "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
               "hidden_act": "silu", "max_position_embeddings": cfg.context_length,
               "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": None,
               "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.qkv_bias or cfg.bias,
               "attention_dropout": 0.0, "use_sliding_window": False, "sliding_window": None,
               "max_window_layers": cfg.n_layer,
               "bos_token_id": ids.get("bos_token_id"), "eos_token_id": ids.get("eos_token_id")}
    if "pad_token_id" in ids:
        out["pad_token_id"] = ids["pad_token_id"]
    if dtype is not None:
        out["torch_dtype"] = str(dtype).removeprefix("torch.")
    return out


# ---------------------------------------------------------------------------- name mapping
@dataclass(frozen=True)
class _Entry:
    hf: str                       # HF name (GPT-2 without the "transformer." prefix)
    spine: str | None             # None: HF-only tensor that spine lacks (export writes zeros)
    transpose: bool = False       # HF Conv1D stores (in, out)
    rows: tuple[int, int] | None = None  # slice of a packed spine tensor (qkv)
    shape: tuple[int, ...] | None = None  # HF shape, for zero-filled entries


def _mapping(cfg: ModelConfig, fam: str) -> tuple[list[_Entry], list[str]]:
    """(HF↔spine entries, spine tensors HF cannot hold — zero on import, must be zero on export)."""
    e, spine_only = [], []
    d, q, kv = cfg.d_model, cfg.q_dim, cfg.kv_dim
    if fam == "gpt2":
        e += [_Entry("wte.weight", "tok_emb.weight"), _Entry("wpe.weight", "pos_emb.weight")]
        for i in range(cfg.n_layer):
            h, b = f"h.{i}.", f"blocks.{i}."
            for hn, sn in (("ln_1", "norm1"), ("ln_2", "norm2")):
                e += [_Entry(f"{h}{hn}.weight", f"{b}{sn}.weight"), _Entry(f"{h}{hn}.bias", f"{b}{sn}.bias")]
            for hn, sn, has_bias, n_out in (("attn.c_attn", "attn.qkv", cfg.qkv_bias, q + 2 * kv),
                                            ("attn.c_proj", "attn.proj", cfg.bias, d),
                                            ("mlp.c_fc", "mlp.fc", cfg.bias, cfg.d_ff),
                                            ("mlp.c_proj", "mlp.proj", cfg.bias, d)):
                e.append(_Entry(f"{h}{hn}.weight", f"{b}{sn}.weight", transpose=True))
                e.append(_Entry(f"{h}{hn}.bias", f"{b}{sn}.bias" if has_bias else None, shape=(n_out,)))
        e += [_Entry("ln_f.weight", "final_norm.weight"), _Entry("ln_f.bias", "final_norm.bias")]
    else:
        attn_bias = cfg.qkv_bias or cfg.bias
        e.append(_Entry("model.embed_tokens.weight", "tok_emb.weight"))
        for i in range(cfg.n_layer):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            e += [_Entry(f"{h}input_layernorm.weight", f"{b}norm1.weight"),
                  _Entry(f"{h}post_attention_layernorm.weight", f"{b}norm2.weight"),
                  _Entry(f"{h}self_attn.q_norm.weight", f"{b}attn.q_norm.weight"),
                  _Entry(f"{h}self_attn.k_norm.weight", f"{b}attn.k_norm.weight"),
                  _Entry(f"{h}self_attn.o_proj.weight", f"{b}attn.proj.weight")]
            for name, lo, hi in (("q_proj", 0, q), ("k_proj", q, q + kv), ("v_proj", q + kv, q + 2 * kv)):
                e.append(_Entry(f"{h}self_attn.{name}.weight", f"{b}attn.qkv.weight", rows=(lo, hi)))
                if attn_bias:
                    e.append(_Entry(f"{h}self_attn.{name}.bias", f"{b}attn.qkv.bias" if cfg.qkv_bias else None,
                                    rows=(lo, hi) if cfg.qkv_bias else None, shape=(hi - lo,)))
            if attn_bias:
                e.append(_Entry(f"{h}self_attn.o_proj.bias", f"{b}attn.proj.bias" if cfg.bias else None, shape=(d,)))
            for hn, sn in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "proj")):
                e.append(_Entry(f"{h}mlp.{hn}.weight", f"{b}mlp.{sn}.weight"))
                if cfg.bias:
                    spine_only.append(f"{b}mlp.{sn}.bias")
        e.append(_Entry("model.norm.weight", "final_norm.weight"))
    if not cfg.tie_embeddings:
        e.append(_Entry("lm_head.weight", "lm_head.weight"))
    return e, spine_only


def _ignored(fam: str, key: str, tied: bool) -> bool:
    if tied and key == "lm_head.weight":
        return True  # the tied head is tok_emb; some files store a copy
    if fam == "gpt2":
        return key.endswith(".attn.bias") or key.endswith(".attn.masked_bias")  # causal-mask buffers
    return key.endswith("rotary_emb.inv_freq")


# ---------------------------------------------------------------------------- reading HF weights
def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _weight_files(src: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        single = src / index_name.removesuffix(".index.json")
        if single.is_file():
            return [single]
        index = src / index_name
        if index.is_file():
            data = _read_json(index, "weight index")
            wmap = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(wmap, dict) or not wmap:
                raise ValueError(f"{index}: no 'weight_map' object")
            files = [src / f for f in sorted(set(wmap.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{index} lists shard(s) {missing} that are missing from {src}")
            return files
    raise FileNotFoundError(f"{src} holds no HF weights: expected model.safetensors, model.safetensors.index.json "
                            "(sharded), or pytorch_model.bin")


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # an unsafe pickle, a truncated zip, ...
        raise ValueError(f"{path} could not be loaded with torch.load(weights_only=True) "
                         f"({type(e).__name__}: {e}); only plain tensor state dicts are accepted") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(sd).__name__}")
    return sd


def _iter_tensors(files: list[Path]) -> Iterator[tuple[Path, str, tuple[int, ...], Any, Callable[[], torch.Tensor]]]:
    """Yield (file, name, shape, dtype, load) for every tensor in the weight files, lazily."""
    for f in files:
        if f.suffix == ".safetensors":
            for name, lazy in read_safetensors(f):
                dt = _ST_DTYPES.get(lazy.f.get_slice(name).get_dtype())
                yield f, name, lazy.shape(), dt, lazy.get_tensor
        else:
            for name, t in _torch_load(f).items():
                if isinstance(t, torch.Tensor):
                    yield f, name, tuple(t.shape), t.dtype, (lambda t=t: t)


def _first_float_dtype(files: list[Path]) -> torch.dtype:
    for _, _, _, dt, _ in _iter_tensors(files[:1]):
        if dt is not None and dt.is_floating_point:
            return dt
    return torch.float32


# ---------------------------------------------------------------------------- import
@torch.no_grad()
def import_hf(path: str | Path, *, dtype: torch.dtype | None = None) -> GPT:
    """Build a `GPT` from a HF GPT-2 or Qwen3 checkpoint directory (eval mode, on CPU).

    `dtype` None keeps the checkpoint's floating dtype.
    """
    src = resolve_hf_dir(path)
    hf_cfg = _read_json(src / "config.json", "HF config.json")
    cfg = config_from_hf(hf_cfg)
    fam = hf_cfg["model_type"]
    files = _weight_files(src)
    entries, spine_only = _mapping(cfg, fam)
    by_hf = {e.hf: e for e in entries}
    model = empty_model(cfg, device="cpu", dtype=dtype or _first_float_dtype(files))
    targets = dict(model.state_dict(keep_vars=True))
    filled, unexpected = set(), []
    for f, name, shape, _, load in _iter_tensors(files):
        key = name.removeprefix("transformer.") if fam == "gpt2" else name
        if _ignored(fam, key, cfg.tie_embeddings):
            continue
        entry = by_hf.get(key)
        if entry is None or entry.spine is None:
            unexpected.append(name)
            continue
        dst = targets[entry.spine]
        if entry.rows is not None:
            dst = dst[entry.rows[0]:entry.rows[1]]
        expected = tuple(dst.shape[::-1]) if entry.transpose else tuple(dst.shape)
        if shape != expected:
            raise ValueError(f"{f}: HF tensor {name!r} has shape {list(shape)}, expected {list(expected)} "
                             f"(from config.json, for spine's {entry.spine})")
        t = load()
        dst.copy_(t.t() if entry.transpose else t)
        filled.add(key)
    missing = [e.hf for e in entries if e.spine is not None and e.hf not in filled]
    if missing or unexpected:
        parts = ([f"missing HF tensor(s) {missing[:8]}{' …' if len(missing) > 8 else ''}"] if missing else []) + \
                ([f"unexpected tensor(s) {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}"] if unexpected else [])
        raise ValueError(f"{src}: " + "; ".join(parts))
    for name in spine_only:
        targets[name].zero_()
    return model.eval()


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"]


def resolve_hf_dir(path: str | Path) -> Path:
    """A local HF checkpoint directory for `path`: the directory itself, or a hub name
    (`openai-community/gpt2`, `Qwen/Qwen3-0.6B`) downloaded through `huggingface_hub` (config,
    safetensors and tokenizer files only; cached in the HF cache)."""
    src = Path(path).expanduser()
    if src.is_dir():
        return src
    name = str(path)
    if src.exists() or not _HUB_NAME.fullmatch(name):
        raise FileNotFoundError(f"HF checkpoint directory not found: {src}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{name} is not a local directory, and reading hub names needs huggingface_hub "
                         "(pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(name, allow_patterns=_HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated repo, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{name} is not a local directory and could not be fetched from the Hugging Face hub "
                         f"({type(e).__name__}: {reason}); offline? download it where there is a network "
                         f"(huggingface-cli download {name} --local-dir DIR) and pass DIR") from None


# ---------------------------------------------------------------------------- export
def export_hf(model: GPT, path: str | Path, tokenizer: Any | None = None) -> Path:
    """Write `model` as a HF checkpoint (config.json + model.safetensors) that transformers loads.

    With a tokenizer, its spine files are written too (so `import_hf` restores it exactly), and for
    GPT-2 also HF's vocab.json + merges.txt + tokenizer_config.json.
    Atomic: everything is written into a temporary sibling directory first; a failure leaves
    nothing at `path` (or, for an existing folder, its previous files untouched).
    """
    from .atomic import fsync_dir, remove_stale_siblings, temp_sibling, write_error

    dst = Path(path).expanduser()
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(dst)
    tmp = temp_sibling(dst)
    tmp.mkdir()
    try:
        try:
            _write_hf_files(model, tmp, tokenizer)
        except (OSError, ValueError):
            raise
        except Exception as e:  # SafetensorError (e.g. a full disk) is not an OSError
            raise write_error(dst, e, "HF export") from e
        _fsync_tree(tmp)
        if not dst.exists() or (dst.is_dir() and not any(dst.iterdir())):
            if dst.exists():
                dst.rmdir()
            os.rename(tmp, dst)
        else:
            # an existing folder (export-hf --overwrite): replace our files one by one, config.json
            # last, so transformers never sees the new config beside old weights; other files stay
            for f in sorted(tmp.iterdir(), key=lambda f: f.name == "config.json"):
                os.replace(f, dst / f.name)
            tmp.rmdir()
        fsync_dir(dst.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _fsync_tree(root: Path) -> None:
    from .atomic import fsync_dir, fsync_file

    for f in root.iterdir():
        if f.is_file():
            fsync_file(f)
    fsync_dir(root)


def _write_hf_files(model: GPT, path: Path, tokenizer: Any | None = None) -> Path:
    """The files of `export_hf`, written into the (temporary) directory `path`."""
    from safetensors.torch import save_file

    cfg = model.config
    fam = _family(cfg)
    check_hf_tokenizer(tokenizer)
    entries, spine_only = _mapping(cfg, fam)
    sd = model.state_dict()
    for name in spine_only:
        if torch.count_nonzero(sd[name]).item():
            raise ValueError(f"cannot export as HF {fam}: {name} is non-zero, but HF {fam} has no MLP biases")
    dtype = sd["tok_emb.weight"].dtype
    out: dict[str, torch.Tensor] = {}
    prefix = "transformer." if fam == "gpt2" else ""
    for e in entries:
        hf_name = e.hf if e.hf == "lm_head.weight" else prefix + e.hf
        if e.spine is None:
            out[hf_name] = torch.zeros(e.shape, dtype=dtype)
            continue
        t = sd[e.spine].detach().to("cpu")
        view = e.rows is not None
        if e.rows is not None:
            t = t[e.rows[0]:e.rows[1]]
        if e.spine in ("tok_emb.weight", "lm_head.weight") and t.shape[0] != cfg.vocab_size:
            t, view = t[:cfg.vocab_size], True  # drop the pad_vocab_to rows
        t = t.t().contiguous() if e.transpose else t.contiguous()
        # safetensors refuses tensors that share storage (e.g. slices of one qkv matrix)
        out[hf_name] = t.clone() if view else t
    dst = Path(path).expanduser()
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype), indent=2) + "\n")
    if tokenizer is not None:
        write_hf_tokenizer(tokenizer, dst, fam, cfg.context_length)
    return dst


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'float32' | 'bfloat16' | 'float16' | None → torch dtype (errors list the choices)."""
    if name is None:
        return None
    key = str(name).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[key]
