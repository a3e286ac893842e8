"""`spine classify`: label texts with a trained classifier checkpoint, in one line.

    spine classify runs/spam-scratch/checkpoints/last.ckpt --text "WINNER! Claim your prize" --text "lunch at 1?"

Registered into `spine.commands` (the tool registry) by `modules.cli`; it lives here because it loads
a Lightning checkpoint of `ClassifierModule`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from spine.commands import _device, command


def _read_texts(text: Optional[list[str]], file: Optional[str]) -> list[str]:
    texts = list(text or [])
    if file:
        p = Path(file).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--file {p} not found")
        texts += [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError("give texts with --text (repeatable) or --file (one text per line)")
    return texts


@command("classify", positional=True, repeatable=("text",))
def classify_texts(
    checkpoint: str,
    text: Optional[list[str]] = None,
    file: Optional[str] = None,
    batch_size: int = 32,
    device: Literal["auto", "cpu", "cuda"] = "cpu",
    output: Literal["text", "jsonl"] = "text",
) -> int:
    """Classify texts with a classifier checkpoint written by `spine fit` (e.g. configs/spam-scratch.yaml).

    Args:
        checkpoint: the Lightning checkpoint of a classifier run (runs/spam-scratch/checkpoints/last.ckpt).
        text: a text to classify; repeat --text for several.
        file: a text file, one text per line.
        batch_size: texts per forward pass.
        device: auto (CUDA when available), cpu or cuda.
        output: 'text' prints "label  probability  text" lines; 'jsonl' one JSON object per text.
    """
    import torch

    from datamodules.classification import pad_batch
    from spine.tokenizer import get_tokenizer

    from .classifier import ClassifierModule

    texts = _read_texts(text, file)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint not found: {path} (a .ckpt written by spine fit)")
    raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    hp = raw.get("hyper_parameters") or {}
    if not hp.get("num_classes"):
        raise ValueError(f"{path} is not a classifier checkpoint (no num_classes in its hyper-parameters)")
    dm = raw.get("datamodule_hyper_parameters") or {}
    dev = _device(device)
    module = ClassifierModule.load_from_checkpoint(path, map_location=dev, weights_only=True).eval()
    tok = module.tokenizer
    if tok is None:
        if "tokenizer" not in dm:
            raise ValueError(f"{path} records no tokenizer (neither the model's nor the data module's)")
        tok = get_tokenizer(dm["tokenizer"], dm.get("vocab_dir"))
    label_map = dm.get("label_map") or {}
    names = {int(v): str(k) for k, v in label_map.items()}
    ctx = module.model.config.context_length
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            # keep the first tokens of a long text, as the data module does
            items = [((tok.encode(t) or [tok.pad_id])[:ctx], 0) for t in chunk]
            batch = pad_batch(items, tok.pad_id)
            probs = module(batch["input_ids"].to(dev), batch["lengths"].to(dev)).float().softmax(-1).cpu()
            for t, p in zip(chunk, probs):
                label = int(p.argmax())
                rows.append({"text": t, "label": label, "label_name": names.get(label, str(label)),
                             "probs": [round(float(x), 6) for x in p]})
    for r in rows:
        if output == "jsonl":
            print(json.dumps(r, ensure_ascii=False))
        else:
            print(f"{r['label_name']}\t{r['probs'][r['label']]:.3f}\t{r['text']}")
    return 0
