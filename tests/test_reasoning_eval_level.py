"""ReasoningEval as a level check during fit: keeping the weights closest to a level (`target`), stopping past
it (`stop_above`), teacher-forced checks (`forced`) and checks of averaged weights (`averaged`)."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from callbacks import ReasoningEval
from spine.commands import main
from spine.params import SamplingParams
from spine.reasoning.problems import load_problems
from tests.support.tiny_lm import tiny_lm as _tiny_lm


def _scripted_accuracy_fit(tmp_path, monkeypatch, correct_of_4):
    """A tiny byte-level pretraining setup whose ReasoningEval checks report `correct_of_4[i]` / 4 at the
    i-th check (the real evaluation still runs). Returns (data module, module, {step: lm_head weight})."""
    import dataclasses

    import callbacks.reasoning_eval as rev

    real, scripted, weights = rev.evaluate, iter(correct_of_4), {}

    def scripted_evaluate(problems, engine, pipeline, **kw):
        report = real(problems, engine, pipeline, **kw)
        k = next(scripted)
        weights[kw["extra"]["global_step"]] = module.model.lm_head.weight.detach().clone()
        return dataclasses.replace(report, summary=dataclasses.replace(report.summary, n_correct=k, accuracy=k / 4))

    monkeypatch.setattr(rev, "evaluate", scripted_evaluate)
    dm, module = _tiny_lm(tmp_path)
    return dm, module, weights


def test_reasoning_eval_target_keeps_the_weights_closest_to_a_level(tmp_path, monkeypatch):
    """`target` logs |accuracy - target| beside the accuracy; ModelCheckpoint on that gap (mode min) keeps
    the step whose accuracy is nearest the level, whatever the curve does before and after it (and only
    warns at the steps before `start_step`, where the gap is not logged yet), and `spine consolidate` turns
    that .ckpt into the weights of that step."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from spine.checkpoint import load_checkpoint

    dm, module, weights = _scripted_accuracy_fit(tmp_path, monkeypatch, [1, 4, 2, 3, 0, 0])  # steps 3..8
    level = ReasoningEval(problems="synthetic:level=1,n=20,seed=99,split=train", limit=4, every_n_steps=1,
                          sampling=SamplingParams(max_new_tokens=4, stop=("\nQuestion:",)), at_fit_end=False,
                          name="level", target=0.6, start_step=3)
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="reasoning/level/greedy_gap", mode="min",
                           save_top_k=1, every_n_train_steps=1, filename="closest")
    logger = CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_steps=8, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=logger,
                        use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[level, keep])
    trainer.fit(module, datamodule=dm)
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    gaps = {int(r["step"]): float(r["reasoning/level/greedy_gap"]) for r in rows if r.get("reasoning/level/greedy_gap")}
    # accuracies 0.25 / 1.0 / 0.5 / 0.75 / 0 / 0 -> gaps to 0.6: 0.35 / 0.4 / 0.1 / 0.15 / 0.6 / 0.6
    assert gaps == pytest.approx({3: 0.35, 4: 0.4, 5: 0.1, 6: 0.15, 7: 0.6, 8: 0.6})
    assert float(keep.best_model_score) == pytest.approx(0.1)
    assert torch.load(keep.best_model_path, weights_only=False, map_location="cpu")["global_step"] == 5
    assert main(["consolidate", keep.best_model_path, str(tmp_path / "closest")]) == 0
    model, _ = load_checkpoint(tmp_path / "closest")
    assert torch.equal(model.lm_head.weight, weights[5]) and not torch.equal(weights[5], weights[8])
    for bad in (30, True, "0.3"):
        with pytest.raises(ValueError, match="target must be an accuracy between 0 and 1"):
            ReasoningEval(target=bad)


def test_reasoning_eval_stop_above_ends_the_fit_at_the_first_check_that_reaches_it(tmp_path, monkeypatch):
    """`stop_above` stops the fit after the first periodic check at or above it, without validation, so it
    works beside the closest-level ModelCheckpoint (whose gap is missing before `start_step`) even with the
    validation Lightning runs at the stop; bad values are refused in one line."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm, module, weights = _scripted_accuracy_fit(tmp_path, monkeypatch, [1, 2, 3, 4, 4])  # steps 4, 6, 8, ...
    # stop_above equal to an accuracy reached: the comparison is >=
    level = ReasoningEval(problems="synthetic:level=1,n=20,seed=99,split=train", limit=4, every_n_steps=2,
                          sampling=SamplingParams(max_new_tokens=4, stop=("\nQuestion:",)), at_fit_end=False,
                          name="level", target=0.5, start_step=4, stop_above=0.75)
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="reasoning/level/greedy_gap", mode="min",
                           save_top_k=1, every_n_train_steps=2, filename="closest")
    trainer = L.Trainer(max_steps=20, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                        use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
                        val_check_interval=20, check_val_every_n_epoch=None, limit_val_batches=1,
                        num_sanity_val_steps=0, callbacks=[level, keep])
    trainer.fit(module, datamodule=dm)
    # accuracies 0.25 / 0.5 / 0.75 at steps 4 / 6 / 8: the fit ends at step 8, nothing is checked after it,
    # and the weights kept are step 6's (gap 0), not the stop step's
    assert trainer.global_step == 8 and sorted(weights) == [4, 6, 8]
    assert torch.load(keep.best_model_path, weights_only=False, map_location="cpu")["global_step"] == 6
    for bad in (1.5, True, "0.5"):
        with pytest.raises(ValueError, match="stop_above must be an accuracy between 0 and 1"):
            ReasoningEval(stop_above=bad, every_n_steps=1)
    for every in (0, -1):
        with pytest.raises(ValueError, match="stop_above 0.5 needs every_n_steps > 0"):
            ReasoningEval(stop_above=0.5, every_n_steps=every)


def test_reasoning_eval_forced_pipeline_checks_a_level_without_decoding(tmp_path, monkeypatch):
    """Pipeline `forced` logs the teacher-forced match rate (and its gap to `target`) of the fit's current
    weights on the problems' worked solutions, stops the fit through `stop_above` like a decoded check,
    writes no trace, and is refused with options or without worked solutions."""
    import callbacks.reasoning_eval as rev

    real, scripted, seen = rev.forced_matches_ids, iter([1, 3, 4]), []

    def scripted_forced(model, rows, **kw):
        out = real(model, rows, **kw)  # the real check runs on the fit's weights
        seen.append((len(rows), kw, out))
        k = next(scripted)
        return [True] * k + [False] * (len(rows) - k)

    monkeypatch.setattr(rev, "forced_matches_ids", scripted_forced)
    dm, module = _tiny_lm(tmp_path)
    level = ReasoningEval(problems="task:chain:level=2,n=20,seed=99,split=train", limit=4, every_n_steps=2,
                          pipelines=[{"name": "forced"}], sampling=SamplingParams(max_new_tokens=4),
                          at_fit_end=False, name="level", target=0.5, stop_above=1.0, batch_size=3)
    logger = CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_steps=20, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=logger,
                        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[level])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 6  # 1/4, 3/4, 4/4 at steps 2, 4, 6: stop_above 1.0 reached at step 6
    assert [(r["step"], r["pipeline"], r["accuracy"], r["trace"]) for r in level.results] == [
        (2, "forced", 0.25, None), (4, "forced", 0.75, None), (6, "forced", 1.0, None)]
    assert [(n, kw) for n, kw, _ in seen] == [(4, {"pad_id": 256, "batch_size": 3})] * 3
    assert all(out == [False] * 4 for _, _, out in seen)  # a tiny model after 6 steps writes no chain solution
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    gaps = {int(r["step"]): float(r["reasoning/level/forced_gap"]) for r in rows if r.get("reasoning/level/forced_gap")}
    assert gaps == pytest.approx({2: 0.25, 4: 0.25, 6: 0.5})
    assert not (Path(logger.log_dir) / "traces").exists()
    with pytest.raises(ValueError, match="pipeline 'forced' takes no options"):
        ReasoningEval(pipelines=[{"name": "forced", "n": 4}])
    bare = ReasoningEval(problems="synthetic:level=1,n=4,seed=7,split=eval", pipelines=[{"name": "forced"}],
                         every_n_steps=1)
    bare._problems = None
    monkeypatch.setattr(rev, "load_problems", lambda src: [
        dataclasses.replace(p, metadata={}) for p in load_problems(src)])
    with pytest.raises(ValueError, match="has no worked solution"):
        bare._load(module)


def test_reasoning_eval_averaged_reads_the_weight_averaging_callbacks_weights(tmp_path, monkeypatch):
    """With `averaged`, each check decodes with the EMA weights of Lightning's EMAWeightAveraging (not the
    current ones), and the closest-level ModelCheckpoint then holds those same weights; without such a
    callback the fit is refused in one line."""
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    import callbacks.reasoning_eval as rev

    real, checked = rev.evaluate, {}

    def recording_evaluate(problems, engine, pipeline, **kw):
        step = kw["extra"]["global_step"]
        checked[step] = (engine.engine.model.lm_head.weight.detach().clone(),
                         module.model.lm_head.weight.detach().clone(),
                         ema._average_model.module.model.lm_head.weight.detach().clone())
        return real(problems, engine, pipeline, **kw)

    monkeypatch.setattr(rev, "evaluate", recording_evaluate)
    dm, module = _tiny_lm(tmp_path)
    ema = EMAWeightAveraging(decay=0.5)
    level = ReasoningEval(problems="synthetic:level=1,n=20,seed=99,split=train", limit=2, every_n_steps=2,
                          sampling=SamplingParams(max_new_tokens=2), at_fit_end=False, name="level", target=0.5,
                          averaged=True)
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="reasoning/level/greedy_gap", mode="min",
                           save_top_k=1, every_n_train_steps=2, filename="closest")
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                        use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[ema, level, keep])
    trainer.fit(module, datamodule=dm)
    assert sorted(checked) == [2, 4]
    for evaluated, current, averaged in checked.values():
        assert torch.equal(evaluated, averaged) and not torch.equal(evaluated, current)
    saved = torch.load(keep.best_model_path, weights_only=False, map_location="cpu")
    assert torch.equal(saved["state_dict"]["model.lm_head.weight"], checked[saved["global_step"]][2])
    dm, module = _tiny_lm(tmp_path / "again")
    bare = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                     callbacks=[ReasoningEval(averaged=True)])
    with pytest.raises(ValueError, match="averaged=true evaluates the weights of a WeightAveraging callback"):
        bare.fit(module, datamodule=dm)
