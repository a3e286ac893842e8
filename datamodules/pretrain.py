"""`PretrainDataModule`: a token stream in, `{"input_ids", "targets"}` batches out (book ch.2)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader

from spine.data import (
    ResolvedSource,
    ResumableSampler,
    RandomWindows,
    TokenWindows,
    sha256_json,
    cache_key,
    check_enough_tokens,
    default_cache_dir,
    load_tokens,
    num_windows,
    resolve_source,
    split_point,
    tokenize_to_cache,
)
from spine.tokenizer import (ENDOFTEXT, GPT2_EOS_ID, TOKENIZER_SPEC_FILE, Tokenizer, get_tokenizer, load_tokenizer,
                             sha256_file)

_BUILTIN_SIZES = {"gpt2": (GPT2_EOS_ID + 1, GPT2_EOS_ID), "byte": (257, 256)}  # name -> (vocab_size, eos/pad id)


class _ResumableLoader(DataLoader):
    """A DataLoader that tells Lightning it is resumable (else Lightning warns on mid-epoch resume).

    The resume position does not travel here: the loader cannot know how many of its batches
    were trained on (DataLoader workers fetch ahead of training). `PretrainDataModule.state_dict`
    carries it, counted from the trainer's progress.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class PretrainDataModule(L.LightningDataModule):
    """Sliding-window (or random-offset) next-token batches over a cached token stream.

    Source: a path, glob, directory of *.txt, `URL#sha256=HEX` (or `sha256=`), `hf:NAME[:CONFIG]`,
    `hf-disk:PATH`, `synthetic`, or a list of these (concatenated). Documents are joined with the
    tokenizer's end-of-text id. Tokenizer: "gpt2", "byte", a saved-tokenizer directory, or "bpe"
    (a `BPETokenizer` of `bpe_vocab_size` trained on the corpus in `prepare_data`, its
    `<|endoftext|>` pinned to id `bpe_vocab_size - 1` so `vocab_size`/`pad_id` are known at once).

    `prepare_data` (one process per node) downloads, trains the BPE and tokenizes into
    `cache_dir` (default $SPINE_CACHE_DIR or ~/.cache/spine), keyed by content fingerprint and
    tokenizer; `setup` only memory-maps the cache and builds the datasets. The stream is cut at
    floor(n * (1 - val_fraction)); train windows (stride `stride`, default `context_length`) and
    val windows (stride `context_length`, so each val token is scored once) stay on their side.
    `test_dataloader` serves the val split.

    Exact resume: `state_dict()` stores the train sampler's (epoch, consumed samples), with
    consumed = `trainer.fit_loop.epoch_loop.batch_progress.current.processed * batch_size`,
    i.e. batches whose `training_step` ran (per rank under DDP). The sampler's own count is not
    used: with DataLoader workers it runs ahead of training by the prefetched batches, and
    restoring it would silently drop them (the resume test fails that way). On load the sampler
    skips exactly that many samples of that epoch; a checkpoint taken after the epoch's last
    batch is saved as "epoch + 1, nothing consumed", because Lightning builds the resumed
    iterator before it calls `set_epoch`. Under DDP (trainer.world_size > 1) the train sampler
    is sharded here (DistributedSampler's layout), so the Trainer MUST be built with
    `use_distributed_sampler=False`; otherwise Lightning would wrap it again, and
    `train_dataloader` raises. Val/test are sharded the same way (padded by wrapping, like
    Lightning's default, so up to world_size - 1 windows count twice).

    Args:
        source: text to train on: a file, glob or directory of *.txt, `URL#sha256=HEX`, `hf:NAME[:CONFIG]`
            (a Hugging Face dataset), `hf-disk:PATH`, `synthetic` (generated arithmetic problems), or a
            list of these.
        tokenizer: "gpt2", "byte", "bpe" (trained on the corpus) or a saved-tokenizer directory.
        vocab_dir: directory with GPT-2's encoder.json + vocab.bpe (offline GPT-2 tokenizer).
        context_length: tokens per training window.
        stride: step between train windows (default: context_length, no overlap).
        sampling: "sliding" (windows at a stride) or "random" (random offsets each epoch).
        samples_per_epoch: windows per epoch with sampling=random.
        batch_size: windows per batch (per device).
        val_fraction: share of the token stream held out for validation (its end).
        seed: shuffling seed.
        shuffle: shuffle the train windows.
        drop_last: drop the last incomplete batch.
        num_workers: DataLoader workers.
        cache_dir: token cache directory (default $SPINE_CACHE_DIR or ~/.cache/spine).
        sha256: expected sha256 of a single-file source.
        encoding_errors: "strict" (non-UTF-8 bytes are an error naming file and offset) or "replace".
        hf_split: split of an hf: dataset.
        hf_text_column: text column of an hf: dataset.
        hf_streaming: stream an hf: dataset instead of downloading it whole.
        synthetic_problems: problems generated for source=synthetic.
        synthetic_levels: difficulty levels of the synthetic problems.
        bpe_vocab_size: vocabulary of tokenizer=bpe.
    """

    def __init__(self, source: str | list[str] = "synthetic", tokenizer: str = "gpt2", vocab_dir: str | None = None,
                 context_length: int = 256, stride: int | None = None, sampling: str = "sliding",
                 samples_per_epoch: int | None = None, batch_size: int = 8, val_fraction: float = 0.1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, num_workers: int = 0, cache_dir: str | None = None,
                 sha256: str | None = None, encoding_errors: str = "strict", hf_split: str = "train",
                 hf_text_column: str = "text", hf_streaming: bool = False, synthetic_problems: int = 2000,
                 synthetic_levels: list[int] = [1, 2], bpe_vocab_size: int = 512):  # noqa: B006 (jsonargparse signature)
        super().__init__()
        self.save_hyperparameters()
        for name, value, low in (("context_length", context_length, 1), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0), ("synthetic_problems", synthetic_problems, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if stride is not None and (not isinstance(stride, int) or stride < 1):
            raise ValueError(f"stride must be an integer >= 1 or None, got {stride!r}")
        if sampling not in ("sliding", "random"):
            raise ValueError(f"sampling must be 'sliding' or 'random', got {sampling!r}")
        if samples_per_epoch is not None and (sampling != "random" or samples_per_epoch < 1):
            raise ValueError(f"samples_per_epoch (got {samples_per_epoch!r}) needs sampling='random' and a value >= 1")
        if encoding_errors not in ("strict", "replace"):
            raise ValueError(f"encoding_errors must be 'strict' or 'replace', got {encoding_errors!r}")
        split_point(0, val_fraction)  # validates the range
        if tokenizer == "bpe" and (not isinstance(bpe_vocab_size, int) or not 258 <= bpe_vocab_size <= 1 << 16):
            raise ValueError(f"bpe_vocab_size must be an integer in [258, 65536], got {bpe_vocab_size!r}")
        self.context_length = context_length
        self.stride = stride or context_length
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._tokenizer: Tokenizer | None = None
        if tokenizer not in (*_BUILTIN_SIZES, "bpe"):
            # A directory or another named tokenizer: build it now (cheap) so vocab_size is exact;
            # an unknown name fails here, before any data work.
            self._tokenizer = get_tokenizer(tokenizer, vocab_dir)
        self._source: ResolvedSource | None = None
        self._token_path: Path | None = None
        self._train_sampler: ResumableSampler | None = None
        self._pending_state: dict[str, Any] | None = None
        self.train_dataset: TokenWindows | RandomWindows | None = None
        self.val_dataset: TokenWindows | None = None

    # ------------------------------------------------------------------ attributes for link_arguments
    @property
    def vocab_size(self) -> int:
        """Ids the model must embed (for "bpe": `bpe_vocab_size`, an upper bound of what training reaches)."""
        name = self.hparams.tokenizer
        if name == "bpe":
            return self.hparams.bpe_vocab_size
        return _BUILTIN_SIZES[name][0] if name in _BUILTIN_SIZES else self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        name = self.hparams.tokenizer
        if name == "bpe":
            return self.hparams.bpe_vocab_size - 1
        return _BUILTIN_SIZES[name][1] if name in _BUILTIN_SIZES else self.tokenizer.eos_id

    @property
    def pad_id(self) -> int:
        name = self.hparams.tokenizer
        return self.eos_id if name in (*_BUILTIN_SIZES, "bpe") else self.tokenizer.pad_id

    @property
    def tokenizer(self) -> Tokenizer:
        """The Tokenizer (for "bpe": the one `prepare_data` trained, loaded from the cache)."""
        if self._tokenizer is None:
            if self.hparams.tokenizer == "bpe":
                d = self._bpe_dir()
                if not (d / TOKENIZER_SPEC_FILE).is_file():
                    raise RuntimeError(f"the BPE tokenizer is trained by prepare_data() and is not in {d} yet; "
                                       f"call prepare_data() (Trainer.fit does) before using .tokenizer")
                self._tokenizer = load_tokenizer(d)
            else:
                self._tokenizer = get_tokenizer(self.hparams.tokenizer, self.hparams.vocab_dir)
            if self._tokenizer.vocab_size > self.vocab_size:  # pragma: no cover - guards the constants above
                raise ValueError(f"tokenizer vocab_size {self._tokenizer.vocab_size} exceeds {self.vocab_size}")
        return self._tokenizer

    # ------------------------------------------------------------------ heavy work, once
    def _resolve(self) -> ResolvedSource:
        if self._source is None:
            h = self.hparams
            self._source = resolve_source(
                h.source, sha256=h.sha256, encoding_errors=h.encoding_errors, cache_dir=self.cache_dir,
                hf_split=h.hf_split, hf_text_column=h.hf_text_column, hf_streaming=h.hf_streaming,
                synthetic_problems=h.synthetic_problems, synthetic_levels=list(h.synthetic_levels), synthetic_seed=h.seed)
        return self._source

    def _bpe_dir(self) -> Path:
        import spine.bpe

        key = sha256_json({"source": self._resolve().fingerprint, "vocab_size": self.hparams.bpe_vocab_size,
                            "code": sha256_file(spine.bpe.__file__)})
        return self.cache_dir / "tokenizers" / f"bpe-{key[:32]}"

    def _train_bpe(self) -> None:
        from spine.bpe import BPETokenizer

        d = self._bpe_dir()
        if (d / TOKENIZER_SPEC_FILE).is_file():
            return
        size = self.hparams.bpe_vocab_size
        tok = BPETokenizer.train(self._resolve().documents, size, special_tokens=(ENDOFTEXT,))
        if tok.eos_id != size - 1:  # stopped early: pin <|endoftext|> to the last id anyway
            stats = tok.training_stats
            tok = BPETokenizer(list(range(256)), tok.merges, {ENDOFTEXT: size - 1}, tok.pattern)
            tok.training_stats = stats
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}."))
        try:
            tok.save(tmp)
            os.replace(tmp, d)  # atomic; if another process won the race, its identical copy stays
        except OSError:
            if not (d / TOKENIZER_SPEC_FILE).is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _cache_path(self) -> Path:
        return self.cache_dir / "tokens" / f"{cache_key(self._resolve().fingerprint, self.tokenizer)}.bin"

    def prepare_data(self) -> None:
        """Download, (train the BPE,) tokenize and cache. Runs once per node under Lightning."""
        src = self._resolve()
        if self.hparams.tokenizer == "bpe":
            self._train_bpe()
        key = cache_key(src.fingerprint, self.tokenizer)
        self._token_path = tokenize_to_cache(src.documents, self.tokenizer, self.cache_dir, key,
                                             source_fingerprint=src.fingerprint, description=src.description)
        self._check_sizes(len(load_tokens(self._token_path, verify=False)))  # setup verifies the bytes

    def _check_sizes(self, n: int) -> int:
        """Validate the corpus size; return the train/val split point."""
        desc = self._resolve().description
        if n == 0:
            raise ValueError(f"corpus is empty: {desc} contains no text")
        ctx, vf = self.context_length, self.hparams.val_fraction
        check_enough_tokens(n, ctx, f"corpus {desc}")
        cut = split_point(n, vf) if vf > 0 else n
        check_enough_tokens(cut, ctx, f"train split (first {cut} of {n} tokens)")
        if vf > 0:
            check_enough_tokens(n - cut, ctx, f"val split (last {n - cut} of {n} tokens, val_fraction={vf}; "
                                              f"val_fraction=0 turns validation off)")
        if self.hparams.sampling == "sliding" and self.hparams.drop_last:
            n_win = num_windows(cut, ctx, self.stride)
            if n_win < self.batch_size:
                raise ValueError(f"train split has {n_win} windows, fewer than batch_size {self.batch_size}, so "
                                 f"drop_last=True leaves no batch; lower batch_size or stride, or add text")
        return cut

    # ------------------------------------------------------------------ per process
    def setup(self, stage: str | None = None) -> None:
        """Map the cached tokens and build the datasets (runs `prepare_data` if the cache is missing)."""
        path = self._token_path or self._cache_path()
        if not path.is_file():
            self.prepare_data()  # used outside a Trainer, or a node without the shared cache
            path = self._token_path or path
        tokens = load_tokens(path)
        n = len(tokens)
        cut = self._check_sizes(n)
        ctx = self.context_length
        if self.hparams.sampling == "random":
            per_epoch = self.hparams.samples_per_epoch or num_windows(cut, ctx, ctx)
            self.train_dataset = RandomWindows(tokens, ctx, per_epoch, seed=self.hparams.seed, start=0, end=cut)
        else:
            self.train_dataset = TokenWindows(tokens, ctx, self.stride, start=0, end=cut)
        self.val_dataset = TokenWindows(tokens, ctx, ctx, start=cut, end=n) if cut < n else None
        self.n_tokens, self.split_at = n, cut

    # ------------------------------------------------------------------ loaders
    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return 1, 0
        if getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False):
            raise RuntimeError("PretrainDataModule shards data itself under DDP (for exact resume); build the "
                               "Trainer with use_distributed_sampler=False")
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset: Any, sampler: Any, drop_last: bool, cls: type = DataLoader) -> DataLoader:
        workers = self.hparams.num_workers
        # A private generator: creating an iterator draws a base seed from it, and drawing from the
        # global RNG instead would shift dropout masks after a resume (exact resume needs them equal).
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return cls(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                   pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, generator=generator)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        replicas, rank = self._replicas()
        random = self.hparams.sampling == "random"
        # Random windows are already in random order; keeping indices sequential lets RandomWindows
        # draw its offsets a block at a time.
        sampler = ResumableSampler(self.train_dataset, shuffle=self.hparams.shuffle and not random,
                                   seed=self.hparams.seed, num_replicas=replicas, rank=rank, with_epoch=random)
        if self._train_sampler is not None:
            sampler.set_epoch(self._train_sampler.epoch)  # a reloaded loader keeps its epoch
        if self._pending_state is not None:
            sampler.load_state_dict(self._pending_state)
            self._pending_state = None
        self._train_sampler = sampler
        return self._loader(self.train_dataset, sampler, self.hparams.drop_last, _ResumableLoader)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            return []  # val_fraction=0: no validation
        replicas, rank = self._replicas()
        sampler = ResumableSampler(self.val_dataset, shuffle=False, num_replicas=replicas, rank=rank) \
            if replicas > 1 else None
        return self._loader(self.val_dataset, sampler, drop_last=False)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    # ------------------------------------------------------------------ resume
    def _trained_batches(self) -> tuple[int, float] | None:
        """(batches of this epoch whose training_step ran, batches per epoch) from the trainer; None outside fit."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed, trainer.num_training_batches

    def state_dict(self) -> dict[str, Any]:
        """{"train_sampler": {epoch, consumed, ...}}; consumed counts trained batches × batch_size."""
        if self._train_sampler is None:
            return {"train_sampler": dict(self._pending_state)} if self._pending_state else {}
        sampler = self._train_sampler
        state = sampler.state_dict()
        progress = self._trained_batches()
        if progress is not None:
            processed, per_epoch = progress
            trained, own = processed * self.batch_size, sampler.consumed
            # The sampler is never behind training, only ahead (prefetch), so min() is exact. It is
            # "behind" only right after set_epoch(new), while Lightning's counter still holds last
            # epoch's value: then min() gives the correct 0.
            state["consumed"] = min(trained, own)
            if processed >= per_epoch and own >= min(trained, len(sampler)):
                # Epoch complete: save "start of the next epoch". Lightning resumes into the next
                # epoch but creates the loader iterator *before* calling set_epoch (workers then
                # prefetch at once), so the state must already name the epoch it will run.
                state["epoch"], state["consumed"] = sampler.epoch + 1, 0
        state["batch_size"] = self.batch_size
        return {"train_sampler": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the train sampler at the saved (epoch, consumed); applied when the loader is built."""
        state = state_dict.get("train_sampler")
        if not state:
            return
        if self._train_sampler is not None:
            self._train_sampler.load_state_dict(state)
        else:
            self._pending_state = dict(state)
