"""spine: one core for a GPT-style language model and the reasoning system built on it.

Pure PyTorch (no Lightning): tokenizers, `ModelConfig`/`GPT`, generation and scoring, checkpoints
and Hugging Face import/export, LoRA, training math, and `spine.reasoning`.
"""
from .bpe import BPETokenizer
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig
from .engine import Completion, Engine, SamplingParams, load_model, sequence_logprobs
from .generation import generate, score
from .hf import export_hf, import_hf
from .model import GPT
from .tokenizer import get_tokenizer

__all__ = ["BPETokenizer", "Completion", "Engine", "GPT", "ModelConfig", "SamplingParams", "export_hf", "generate", "get_tokenizer", "import_hf",
           "load_checkpoint", "load_model", "save_checkpoint", "score", "sequence_logprobs"]
__version__ = "0.1.0"
