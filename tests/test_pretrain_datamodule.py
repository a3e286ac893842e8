"""PretrainDataModule: book numbers, tokenizers, cache, exact resume, DDP sharding, errors."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import torch

from datamodules.pretrain import PretrainDataModule
from spine import data as D


def _verdict(shared_data: Path) -> Path:
    p = shared_data / "the-verdict" / "the-verdict.txt"
    if not p.is_file():
        pytest.skip(f"{p} missing")
    return p


def _dm(tmp_path: Path, **kw) -> PretrainDataModule:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return PretrainDataModule(**kw)


def _ready(dm: PretrainDataModule) -> PretrainDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _small_synthetic(tmp_path: Path, **kw) -> PretrainDataModule:
    args = dict(source="synthetic", tokenizer="byte", synthetic_problems=30, context_length=32, batch_size=8)
    return _dm(tmp_path, **{**args, **kw})


# ----------------------------------------------------------------------------- the book's numbers
def test_the_verdict_gpt2_book_counts(tmp_path, shared_data, gpt2_vocab_dir):
    path = _verdict(shared_data)
    dm = _ready(_dm(tmp_path, source=str(path), tokenizer="gpt2", vocab_dir=str(gpt2_vocab_dir),
                    context_length=256, stride=256, batch_size=2, shuffle=False))
    assert (dm.vocab_size, dm.eos_id, dm.pad_id, dm.context_length) == (50257, 50256, 50256, 256)
    assert dm.n_tokens == 5145
    # 90/10 split: floor(5145 * 0.9) = floor(4630.5) = 4630 train tokens, 515 val tokens.
    assert dm.split_at == 4630
    # train: i in range(0, 4630 - 256, 256) = 0, 256, ..., 4352 -> 4374 / 256 rounded up = 18 windows
    # val:   i in range(0, 515 - 256, 256)  = 0, 256               -> 2 windows
    assert len(dm.train_dataset) == 18 and len(dm.val_dataset) == 2
    # the book: 9 train batches and 1 val batch of 2 x 256
    assert len(dm.train_dataloader()) == 9 and len(dm.val_dataloader()) == 1
    ids = dm.tokenizer.encode(path.read_text(encoding="utf-8"))
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 256) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist() == ids[:256] and batch["targets"][0].tolist() == ids[1:257]
    assert batch["input_ids"][1].tolist() == ids[256:512]
    last = dm.train_dataset[17]
    assert last["input_ids"].tolist() == ids[4352:4608] and last["targets"].tolist() == ids[4353:4609]
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"][0].tolist() == ids[4630:4886] and val["targets"][1].tolist() == ids[4887:5143]


def test_synthetic_byte_needs_no_files(tmp_path):
    dm = _ready(_small_synthetic(tmp_path))
    assert (dm.vocab_size, dm.eos_id, dm.pad_id) == (257, 256, 256)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 32)
    assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    text = dm.tokenizer.decode(dm.train_dataset[0]["input_ids"].tolist())
    assert text.startswith("Question: ")


def test_bpe_is_trained_once_and_cached(tmp_path, monkeypatch):
    dm = _ready(_small_synthetic(tmp_path, tokenizer="bpe", bpe_vocab_size=300, synthetic_problems=60))
    assert (dm.vocab_size, dm.eos_id, dm.pad_id) == (300, 299, 299)  # known before training
    tok = dm.tokenizer
    assert tok.name == "bpe" and tok.vocab_size == 300 and tok.eos_id == 299
    assert any((tmp_path / "cache" / "tokenizers").iterdir())
    assert int(D.load_tokens(dm._token_path).max()) <= 299

    from spine.bpe import BPETokenizer

    monkeypatch.setattr(BPETokenizer, "train", classmethod(lambda *a, **k: pytest.fail("BPE re-trained")))
    again = _small_synthetic(tmp_path, tokenizer="bpe", bpe_vocab_size=300, synthetic_problems=60)
    again.setup("fit")  # setup alone loads the cached tokenizer (what non-zero ranks do)
    assert again.tokenizer.encode("Question: 1 + 2") == tok.encode("Question: 1 + 2")


def test_bpe_stopping_early_still_pins_eos_to_last_id(tmp_path):
    with pytest.warns(UserWarning, match="stopped early"):
        dm = _ready(_small_synthetic(tmp_path, tokenizer="bpe", bpe_vocab_size=4000, synthetic_problems=20))
    assert dm.tokenizer.vocab_size == 4000 == dm.vocab_size and dm.tokenizer.eos_id == 3999 == dm.pad_id


def test_tokenizer_from_a_directory(tmp_path):
    from spine.tokenizer import get_tokenizer

    get_tokenizer("byte").save(tmp_path / "tok")
    dm = _ready(_small_synthetic(tmp_path, tokenizer=str(tmp_path / "tok")))
    assert (dm.vocab_size, dm.pad_id, dm.tokenizer.name) == (257, 256, "byte")


def test_cache_is_reused(tmp_path, monkeypatch):
    first = _ready(_small_synthetic(tmp_path))
    monkeypatch.setattr(D, "_encode_group", lambda *a, **k: pytest.fail("re-tokenized"))
    second = _ready(_small_synthetic(tmp_path))
    assert second._token_path == first._token_path
    assert torch.equal(second.train_dataset[3]["input_ids"], first.train_dataset[3]["input_ids"])


def test_random_sampling_is_deterministic_per_epoch(tmp_path):
    def epoch_batches(epoch: int) -> list[torch.Tensor]:
        dm = _ready(_small_synthetic(tmp_path, sampling="random", samples_per_epoch=24, seed=5))
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [b["input_ids"] for b in loader]

    e0, e0b, e1 = epoch_batches(0), epoch_batches(0), epoch_batches(1)
    assert len(e0) == 3 and all(torch.equal(a, b) for a, b in zip(e0, e0b))
    assert not all(torch.equal(a, b) for a, b in zip(e0, e1))


def test_val_fraction_zero_disables_validation(tmp_path):
    dm = _ready(_small_synthetic(tmp_path, val_fraction=0.0))
    assert dm.val_dataloader() == [] and dm.split_at == dm.n_tokens


# ----------------------------------------------------------------------------- resume
def test_state_dict_skips_consumed_batches_without_trainer(tmp_path):
    full = [b["input_ids"] for b in _ready(_small_synthetic(tmp_path, seed=3)).train_dataloader()]
    dm = _ready(_small_synthetic(tmp_path, seed=3))
    it = iter(dm.train_dataloader())
    for _ in range(4):
        next(it)
    state = dm.state_dict()
    assert state["train_sampler"]["consumed"] == 32 and state["train_sampler"]["epoch"] == 0
    resumed = _ready(_small_synthetic(tmp_path, seed=3))
    resumed.load_state_dict(state)
    rest = [b["input_ids"] for b in resumed.train_dataloader()]
    assert len(rest) == len(full) - 4 and all(torch.equal(a, b) for a, b in zip(rest, full[4:]))


class _Recorder(L.LightningModule):
    """Records the first token of every row it trains on; loss is a dummy with a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, tuple[int, ...]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, tuple(batch["input_ids"][:, 0].tolist())))
        return self.w * batch["input_ids"].float().mean()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class _SaveAtEpochStart(L.Callback):
    """Saves in on_train_epoch_start, where Lightning's batch counter still holds last epoch's value."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            trainer.save_checkpoint(self.path)


def _fit(tmp_path: Path, ckpt_dir: Path | None, ckpt_path: str | None = None, drop_last: bool = True) -> list:
    # workers prefetch ahead of training, so the sampler's own count would be wrong here
    dm = _small_synthetic(tmp_path, seed=11, num_workers=1, drop_last=drop_last)
    model = _Recorder()
    callbacks: list = []
    if ckpt_dir is not None:
        callbacks += [L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=1,
                                                  save_top_k=-1),
                      L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="end-{epoch}", every_n_epochs=1,
                                                  save_top_k=-1, save_on_train_epoch_end=True),
                      _SaveAtEpochStart(ckpt_dir / "start-epoch=1.ckpt")]
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
                        enable_checkpointing=ckpt_dir is not None, use_distributed_sampler=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    assert not [w for w in caught if "not resumable" in str(w.message)]
    return model.seen


@pytest.mark.parametrize("drop_last", [True, False])
def test_resumed_fit_continues_at_the_next_unseen_batch(tmp_path, drop_last):
    ckpts = tmp_path / "ckpts"
    full = _fit(tmp_path, ckpts, drop_last=drop_last)
    per_epoch = sum(1 for e, _ in full if e == 0)
    assert per_epoch >= 6 and len(full) == 2 * per_epoch
    assert [b for e, b in full if e == 0] != [b for e, b in full if e == 1]  # reshuffled per epoch
    # (checkpoint, batches already trained): the last batch of epoch 0, the end of epoch 0,
    # mid epoch 0, mid epoch 1
    points = [(f"step={per_epoch}", per_epoch), ("end-epoch=0", per_epoch)]
    if drop_last:
        points += [("step=3", 3), (f"step={per_epoch + 2}", per_epoch + 2)]
    for name, done in points:
        resumed = _fit(tmp_path, None, ckpt_path=str(ckpts / f"{name}.ckpt"), drop_last=drop_last)
        assert resumed == full[done:], f"resume from {name}"
    # Saved in on_train_epoch_start: Lightning's batch counter is still epoch 0's there, yet our
    # state says "epoch 1, nothing consumed". (Lightning itself restores that stale counter and
    # skips epoch 1, so the resumed fit is not compared.)
    state = torch.load(ckpts / "start-epoch=1.ckpt", weights_only=False)["PretrainDataModule"]["train_sampler"]
    assert (state["epoch"], state["consumed"]) == (1, 0)


# ----------------------------------------------------------------------------- DDP
def test_ddp_ranks_get_disjoint_train_batches(tmp_path):
    rows = []
    for rank in range(2):
        dm = _ready(_small_synthetic(tmp_path, val_fraction=0.2, drop_last=False, batch_size=4))
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank,
                                     _accelerator_connector=SimpleNamespace(use_distributed_sampler=False))
        loader = dm.train_dataloader()
        assert loader.sampler.num_replicas == 2 and loader.sampler.rank == rank
        rows.append([dm.train_dataset.offset(i) for i in loader.sampler])
        assert len(list(dm.val_dataloader().sampler)) == -(-len(dm.val_dataset) // 2)
    n = len(dm.train_dataset)
    assert len(rows[0]) == len(rows[1]) == -(-n // 2)
    assert len(set(rows[0]) | set(rows[1])) == n
    if n % 2 == 0:
        assert set(rows[0]).isdisjoint(rows[1])
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0,
                                 _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        dm.train_dataloader()


# ----------------------------------------------------------------------------- errors
def test_errors_for_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: .*missing.txt"):
        _dm(tmp_path, source=str(tmp_path / "missing.txt"), tokenizer="byte").prepare_data()
    with pytest.raises(FileNotFoundError, match="glob matched no files"):
        _dm(tmp_path, source=str(tmp_path / "*.nothing"), tokenizer="byte").prepare_data()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="corpus is empty"):
        _dm(tmp_path, source=str(empty), tokenizer="byte").prepare_data()
    short = tmp_path / "short.txt"
    short.write_text("x" * 100)
    with pytest.raises(ValueError, match=r"has 100 tokens.*needs context_length \+ 1 = 257"):
        _dm(tmp_path, source=str(short), tokenizer="byte", context_length=256).prepare_data()
    with pytest.raises(ValueError, match=r"val split .* has 10 tokens.*= 33"):
        _dm(tmp_path, source=str(short), tokenizer="byte", context_length=32).prepare_data()


def test_non_utf8_strict_and_replace(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café ".encode("latin-1") * 40)
    with pytest.raises(ValueError, match=r"latin1\.txt: not valid UTF-8 at byte offset 3"):
        _dm(tmp_path, source=str(bad), tokenizer="byte", context_length=16, batch_size=2).prepare_data()
    dm = _ready(_dm(tmp_path, source=str(bad), tokenizer="byte", context_length=16, batch_size=2,
                    encoding_errors="replace"))
    assert "caf\ufffd " in dm.tokenizer.decode(dm.train_dataset[0]["input_ids"].tolist())


def test_sha256_mismatch_of_file_url(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("some text " * 50)
    good = hashlib.sha256(f.read_bytes()).hexdigest()
    dm = _ready(_dm(tmp_path, source=f.as_uri(), sha256=good, tokenizer="byte", context_length=16, batch_size=2))
    assert dm.n_tokens == 500
    with pytest.raises(ValueError, match=f"sha256 mismatch for {f.as_uri()}: expected {'1' * 64}, got {good}"):
        _dm(tmp_path, source=f"{f.as_uri()}#sha256={'1' * 64}", tokenizer="byte").prepare_data()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'"):
        _dm(tmp_path, tokenizer="gpt5")
    with pytest.raises(ValueError, match="sampling"):
        _dm(tmp_path, tokenizer="byte", sampling="shuffled")
    with pytest.raises(ValueError, match="samples_per_epoch"):
        _dm(tmp_path, tokenizer="byte", samples_per_epoch=10)
    with pytest.raises(ValueError, match="fewer than batch_size 64"):
        _dm(tmp_path, source="synthetic", tokenizer="byte", synthetic_problems=5, context_length=32,
            batch_size=64).prepare_data()


class _RankRecorder(_Recorder):
    """Writes what each rank trained on to out_dir/rank{r}.json at the end of fit (ddp_spawn children)."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    def on_fit_end(self) -> None:
        import json

        Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))


def _ddp_fit(tmp_path: Path, out: Path, ckpt_dir: Path | None = None, ckpt_path: str | None = None) -> list[list]:
    import json

    out.mkdir(parents=True, exist_ok=True)
    dm = _small_synthetic(tmp_path, seed=5, batch_size=4)
    callbacks = [] if ckpt_dir is None else [L.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="{step}", every_n_train_steps=1, save_top_k=-1)]
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=callbacks, enable_checkpointing=ckpt_dir is not None,
                        use_distributed_sampler=False)
    trainer.fit(_RankRecorder(str(out)), datamodule=dm, ckpt_path=ckpt_path)
    return [[(e, tuple(b)) for e, b in json.loads((out / f"rank{r}.json").read_text())] for r in range(2)]


@pytest.mark.slow
def test_real_ddp_shards_and_resumes(tmp_path):
    ckpts = tmp_path / "ckpts"
    full = _ddp_fit(tmp_path, tmp_path / "full", ckpts)
    n = len(_ready(_small_synthetic(tmp_path, seed=5, batch_size=4)).train_dataset)
    per_rank_batches = -(-n // 2) // 4  # each rank gets half the windows (padded), drop_last batches of 4
    assert len(full[0]) == len(full[1]) == 2 * per_rank_batches and per_rank_batches > 4
    assert full[0] != full[1]
    resumed = _ddp_fit(tmp_path, tmp_path / "resumed", ckpt_path=str(ckpts / "step=3.ckpt"))
    assert resumed[0] == full[0][3:] and resumed[1] == full[1][3:]
