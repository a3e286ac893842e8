"""The GRPO stage on tiny models: skipped groups run no forward/backward, the random-reward control,
truncation masking, bad configs fail in one line, exact resume after SIGKILL, the book's config parses."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from safetensors.torch import load_file

from callbacks import ReasoningEval, RLCurvePlot
from datamodules import PromptDataModule
from modules import GRPOModule
from spine.checkpoint import save_checkpoint
from spine.config import ModelConfig
from spine.engine import SamplingParams
from spine.model import GPT
from spine.tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
from fit_runner import run_in_process  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:LightningCLI's args parameter")

SOURCE = "synthetic:level=1,n=12,seed=1,split=train"


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tok = get_tokenizer("byte")
    cfg = ModelConfig.from_preset("gpt2-tiny", vocab_size=tok.vocab_size, context_length=128, d_model=32,
                                  n_layer=2, n_head=2)
    return save_checkpoint(tmp_path_factory.mktemp("policy") / "tiny", GPT(cfg), tok)


def _module(policy_dir, **kw) -> GRPOModule:
    args = dict(init_from=str(policy_dir), group_size=3, sampling=SamplingParams(temperature=1.0, max_new_tokens=6),
                reward="rl_support.digit_count",
                lr=1e-3, scheduler="constant")
    args.update(kw)
    return GRPOModule(**args)


def _fit(module, tmp_path, batches=2, prompts_per_step=2, source=SOURCE, callbacks=()):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=batches, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, limit_val_batches=0, callbacks=list(callbacks))
    trainer.fit(module, datamodule=PromptDataModule(source, prompts_per_step=prompts_per_step))
    return trainer


class _Counter:
    """Counts forwards run with autograd on (the update's; rollouts decode under inference mode) and
    gradient computations reaching the parameters."""

    def __init__(self, model):
        self.forwards = self.backwards = 0
        model.register_forward_hook(self._fwd)
        for p in model.parameters():
            p.register_hook(self._bwd)

    def _fwd(self, module, args, out):
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.forwards += 1

    def _bwd(self, grad):
        self.backwards += 1
        return grad


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kw", [
    {"reward": "rl_support.constant"},                          # every group has zero variance
    {"reward": "rl_support.constant", "resample_budget": 2},    # redraws cannot help: still nothing
    {"mask_truncated": True},                                   # every completion hits max_new_tokens
])
def test_nothing_to_learn_runs_no_forward_and_no_backward(policy_dir, tmp_path, kw):
    module = _module(policy_dir, **kw)
    counter = _Counter(module.model)
    before = _weights(module.model)
    trainer = _fit(module, tmp_path)
    assert module.rollouts == 2
    assert counter.forwards == 0 and counter.backwards == 0
    assert trainer.global_step == 0                               # no optimizer step either
    assert all(torch.equal(before[k], v) for k, v in module.model.state_dict().items())
    if "mask_truncated" in kw:
        assert module.last_metrics["rl/truncated_frac"] == 1.0    # (the premise of this case)
    else:
        assert module.last_metrics["rl/zero_variance_frac"] == 1.0


def test_groups_with_spread_train(policy_dir, tmp_path):
    module = _module(policy_dir, inner_updates=2, micro_batch_size=4)
    counter = _Counter(module.model)
    before = _weights(module.model)
    held_out = ReasoningEval("synthetic:level=1,n=4,seed=7,split=eval", sampling=SamplingParams(max_new_tokens=4),
                             at_fit_start=True, every_n_steps=2, trace_dir=str(tmp_path / "traces"))
    check = ReasoningEval("synthetic:level=1,n=4,seed=9,split=train", sampling=SamplingParams(max_new_tokens=4),
                          every_n_steps=2, start_step=4, at_fit_end=False, name="check",
                          trace_dir=str(tmp_path / "traces"))
    plot = RLCurvePlot(dirpath=str(tmp_path))
    trainer = _fit(module, tmp_path, callbacks=[held_out, check, plot])
    m = module.last_metrics
    trained = int(m["rl/trained_completions"])
    assert trained == 3 * m["rl/groups_trained"] > 0
    # per update: ceil(trained / 4) micro-batch forwards; 2 updates per rollout batch
    assert trainer.global_step == 4
    assert counter.forwards > 0 and counter.backwards > 0
    assert any(not torch.equal(before[k], v) for k, v in module.model.state_dict().items())
    # held-out accuracy before training (at_fit_start), after update 2 and at the end (step 4)
    assert [r["step"] for r in held_out.results] == [0, 2, 4]
    assert [x for x, _ in plot.history["reasoning/greedy_acc"]] == [0.0, 1.0, 2.0]  # at rollout batches
    # a named eval at the same step is its own curve, under the key it logs (not merged into greedy's)
    assert [r["step"] for r in check.results] == [4]
    assert plot.history["reasoning/check/greedy_acc"] == [(2.0, check.results[0]["accuracy"])]
    assert (tmp_path / "rl_curves.png").stat().st_size > 0
    for key in ("rl/reward_mean", "rl/accuracy", "rl/entropy", "rl/clip_low_frac", "rl/clip_high_frac",
                "rl/completion_len_max", "rl/truncated_frac", "rl/rollout_tokens_per_s", "rl/update_tokens_per_s"):
        assert key in m


def test_the_policy_moves_towards_the_reward(policy_dir, tmp_path):
    """End to end, the sign is right: a reward with spread in every group (the ASCII share of a random
    byte model's text, ~0.5) rises over 30 rollout batches (deterministic: fixed seeds, one thread)."""
    torch.manual_seed(0)
    module = _module(policy_dir, group_size=4, reward="rl_support.ascii_fraction", lr=3e-3,
                     sampling=SamplingParams(temperature=1.0, max_new_tokens=8))
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(pl_module.last_metrics["rl/reward_mean"])

    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=PromptDataModule("synthetic:level=1,n=40,seed=1,split=train", prompts_per_step=4))
    assert len(seen) == 30
    first, last = sum(seen[:5]) / 5, sum(seen[-5:]) / 5
    assert 0.4 < first < 0.6 and last > first + 0.08, (first, last)


def test_only_groups_with_spread_reach_the_update(policy_dir):
    """Rows handed to the update are exactly those of groups whose rewards differ."""
    module = _module(policy_dir, group_size=4)
    problems = PromptDataModule(SOURCE, prompts_per_step=4)
    problems.setup()
    batch = next(iter(problems.train_dataloader()))
    first = module.rollout(batch["problems"], batch["prompts"])
    keep, info = module._select(batch["problems"], batch["prompts"], first)
    r = first["rewards"].view(-1, 4)
    spread = [(row != row[0]).any().item() for row in r]
    assert len(keep["token_ids"]) == 4 * sum(spread)
    assert info["rl/zero_variance_frac"] == pytest.approx(1 - sum(spread) / 4)


def test_random_reward_control_permutes_the_steps_rewards(policy_dir):
    problems = PromptDataModule(SOURCE, prompts_per_step=4)
    problems.setup()
    batch = next(iter(problems.train_dataloader()))
    true = _module(policy_dir, group_size=4).rollout(batch["problems"], batch["prompts"])
    ctl = _module(policy_dir, group_size=4, random_reward=True).rollout(batch["problems"], batch["prompts"])
    # the same samples (same weights, same keyed noise) and the same true rewards ...
    assert ctl["token_ids"] == true["token_ids"]
    assert torch.equal(ctl["true_rewards"], true["rewards"])
    # ... but the rewards the update sees are a permutation of them
    assert sorted(ctl["rewards"].tolist()) == sorted(true["rewards"].tolist())
    assert not torch.equal(ctl["rewards"], true["rewards"])


class _Recorded(GRPOModule):
    """GRPOModule keeping each rollout's engine and samples."""

    def rollout(self, *a, **k):
        self.weights.append([p.detach().clone() for p in self.model.parameters()])
        out = super().rollout(*a, **k)
        self.seen.append((self.engine_used, out["token_ids"]))
        self.logprobs.append(out["logprobs"])
        return out

    def rollout_engine(self):
        self.engine_used = super().rollout_engine()
        return self.engine_used


def _recorded(policy_dir, **kw) -> _Recorded:
    module = _Recorded(init_from=str(policy_dir), group_size=3, reward="rl_support.digit_count", lr=1e-3,
                       scheduler="constant", sampling=SamplingParams(temperature=1.0, max_new_tokens=6), **kw)
    module.seen, module.logprobs, module.weights = [], [], []
    return module


def test_compile_rollouts_keeps_one_engine_and_draws_the_eager_samples(policy_dir, tmp_path, monkeypatch):
    """compile_rollouts: both training steps decode with one compiled Engine, through its fused decode
    step, and draw the eager run's samples (so the trained weights match too, to float rounding).
    torch.compile is the identity here, so the whole fit stays fast: this checks the module's wiring and
    the fused step's path; the next test compiles for real."""
    fused_calls = []

    def no_compile(fn, **kw):
        def counted(*a):
            fused_calls.append(1)
            return fn(*a)
        return counted

    monkeypatch.setattr(torch, "compile", no_compile)
    eager, compiled = _recorded(policy_dir), _recorded(policy_dir, compile_rollouts=True)
    _fit(eager, tmp_path / "eager")
    assert not fused_calls
    _fit(compiled, tmp_path / "compiled")
    assert len(fused_calls) == 2 * 5  # 2 rollouts x (6 new tokens - the one sampled from the prefill)
    (e1, s1), (e2, s2) = compiled.seen
    assert e1 is e2 and e1.compile
    assert eager.seen[0][0] is not eager.seen[1][0] and not eager.seen[0][0].compile
    assert [s for _, s in eager.seen] == [s1, s2]
    assert s1 != s2  # (the premise: the two steps drew different samples)
    # the log-probs (and so the updates) agree to float rounding, not bitwise: the compiled engine's cache
    # is padded to a multiple of 256 positions, so attention sums over more (masked) columns
    for a, b in zip(eager.logprobs, compiled.logprobs):
        assert torch.allclose(torch.tensor([x for r in a for x in r]), torch.tensor([x for r in b for x in r]),
                              atol=1e-5, rtol=0)
    w_eager, w_compiled = eager.model.state_dict(), compiled.model.state_dict()
    assert all(torch.allclose(w_eager[k], w_compiled[k], atol=1e-5, rtol=0) for k in w_eager)
    assert compiled._engine is None  # the KV-cache pool is let go when the fit ends


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="Inductor on CPU needs a C++ compiler")
def test_compiled_rollouts_follow_in_place_weight_updates(policy_dir):
    """Real torch.compile (Inductor on CPU, ~20 s cold on 2 cores): the compiled engine draws the eager
    samples, and after an in-place weight change (what the optimizer does) it draws the new weights'
    samples without compiling again."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    problems = PromptDataModule(SOURCE, prompts_per_step=2)
    problems.setup()
    batch = next(iter(problems.train_dataloader()))
    eager, compiled = _recorded(policy_dir), _recorded(policy_dir, compile_rollouts=True)
    drawn = []
    for step in range(2):
        a = eager.rollout(batch["problems"], batch["prompts"])["token_ids"]
        assert compiled.rollout(batch["problems"], batch["prompts"])["token_ids"] == a
        drawn.append(a)
        if step == 0:
            graphs = counters["stats"]["unique_graphs"]
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():  # the same in-place change on both sides, as an optimizer step makes
                for p, q in zip(eager.model.parameters(), compiled.model.parameters()):
                    delta = torch.randn(p.shape, generator=g)
                    p.add_(delta)
                    q.add_(delta)
    assert drawn[0] != drawn[1]  # (the premise: the new weights draw other samples from the same noise)
    assert counters["stats"]["unique_graphs"] == graphs > 0
    assert compiled.seen[0][0] is compiled.seen[1][0]


def test_rollout_dtype_fp32_copy_follows_the_updates(policy_dir, tmp_path):
    """rollout_dtype decodes from a copy of the weights refreshed before every rollout: in float32 the
    copy is exact, so a 2-step fit draws the samples (and ends at the weights) of a fit without it."""
    plain, copied = _recorded(policy_dir), _recorded(policy_dir, rollout_dtype="fp32")
    _fit(plain, tmp_path / "plain")
    _fit(copied, tmp_path / "copied")
    (e1, s1), (e2, s2) = copied.seen
    assert e1.model is e2.model and e1.model is not copied.model  # one copy, not the trained module
    # (the premise: the first step updated the weights, so a stale copy would draw other samples)
    assert any(not torch.equal(a, b) for a, b in zip(*copied.weights))
    assert s1 != s2 and [s for _, s in plain.seen] == [s1, s2]
    w_plain, w_copied = plain.model.state_dict(), copied.model.state_dict()
    assert all(torch.equal(w_plain[k], w_copied[k]) for k in w_plain)
    assert copied._decode_copy == []  # let go when the fit ends


def test_rollout_dtype_bf16_copy_holds_the_current_weights_rounded(policy_dir):
    with pytest.raises(ValueError, match="rollout_dtype must be null or one of bf16, .* got 'int8'"):
        _module(policy_dir, rollout_dtype="int8")
    module = _module(policy_dir, rollout_dtype="bf16")
    module.model.__dict__["_spine_decode_steps"] = {"compiled for": "the fp32 model"}
    first = module.decode_model()
    assert "_spine_decode_steps" not in first.__dict__  # the copy compiles its own decode step
    with torch.no_grad():  # an optimizer step changes the weights in place
        for p in module.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    copy_ = module.decode_model()
    assert copy_ is first
    for dst, src in zip(copy_.parameters(), module.model.parameters()):
        assert dst.dtype == torch.bfloat16 and not dst.requires_grad
        assert torch.equal(dst, src.detach().to(torch.bfloat16))
    problems = PromptDataModule(SOURCE, prompts_per_step=2)
    problems.setup()
    batch = next(iter(problems.train_dataloader()))
    out = module.rollout(batch["problems"], batch["prompts"])
    assert len(out["token_ids"]) == 2 * 3 and all(len(lp) == len(t) for lp, t in zip(out["logprobs"], out["token_ids"]))


# ----------------------------------------------------------------------------- bad configs, one line
CLI_CONFIG = """
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
model:
  class_path: modules.GRPOModule
  init_args:
    init_from: {policy}
    group_size: {group_size}
    sampling: {{temperature: 1.0, max_new_tokens: {max_new_tokens}}}
    reward: {reward}
data:
  class_path: datamodules.PromptDataModule
  init_args:
    source: "{source}"
    prompts_per_step: 2
"""


@pytest.mark.parametrize("kw, message", [
    ({"group_size": 1}, "group_size must be an integer >= 2"),
    ({"reward": "rl_support.not_a_number"}, "returned 'yes' (str) for problem"),
    ({"max_new_tokens": 100}, "exceeds the policy's context_length 128"),
    ({"reward": "rl_support.missing"}, "cannot be imported"),
])
def test_bad_config_fails_in_one_line(policy_dir, tmp_path, capsys, kw, message):
    args = dict(group_size=2, max_new_tokens=4, reward="rl_support.digit_count", source=SOURCE)
    args.update(kw)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(CLI_CONFIG.format(root=tmp_path, policy=policy_dir, **args))
    code, _ = run_in_process(["fit", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    line = next(x for x in err.splitlines() if x.startswith("spine fit: error:"))
    assert message in line
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- exact resume
RESUME_CONFIG = """
seed_everything: 4
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 8
  default_root_dir: {root}
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/ckpt, save_last: true, every_n_train_steps: 2, save_top_k: -1}}
    - class_path: callbacks.SpineCheckpoint
      init_args: {{dirpath: {root}/spine, on_save: false}}
model:
  class_path: modules.GRPOModule
  init_args:
    init_from: {policy}
    group_size: 3
    sampling: {{temperature: 1.0, max_new_tokens: 5, seed: 11}}
    reward: rl_support.digit_count
    random_reward: true
    lr: 1.0e-3
    warmup_steps: 2
    log_kl: true
data:
  class_path: datamodules.PromptDataModule
  init_args:
    source: "synthetic:level=1,n=5,seed=1,split=train"
    prompts_per_step: 2
"""


def _spine_fit(root: Path, policy: Path, *extra: str) -> subprocess.CompletedProcess:
    root.mkdir(exist_ok=True)
    cfg = root / "config.yaml"
    cfg.write_text(RESUME_CONFIG.format(root=root, policy=policy))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "support"), str(REPO), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "modules.cli", "fit", "--config", str(cfg), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_sigkill_then_resume_is_bitwise_identical(policy_dir, tmp_path):
    """8 updates over 4 epochs of 2 rollout batches (5 problems, 2 per step: an epoch boundary and
    mid-epoch positions both matter); killed after update 4 (checkpoint at 4), resumed."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = _spine_fit(ref, policy_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = _spine_fit(run, policy_dir, "--trainer.callbacks+=killer.KillAtStep", "--trainer.callbacks.step=5")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert not (run / "spine" / "final").exists()
    resumed = _spine_fit(run, policy_dir, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(ref / "spine" / "final" / "model.safetensors")
    b = load_file(run / "spine" / "final" / "model.safetensors")
    start = load_file(policy_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert any(not torch.equal(a[k], start[k]) for k in a)  # training moved the weights


# ----------------------------------------------------------------------------- the book's recipe
def test_book_config_parses(capsys):
    import yaml

    from modules.cli import main

    path = REPO / "configs" / "grpo-qwen3-math.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(path), "--print_config"])
    assert exc.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    m, d = cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert m["init_from"].startswith("hf:") and "Qwen3-0.6B-Base" in m["init_from"]
    assert (m["group_size"], m["lr"], m["sampling"]["max_new_tokens"], m["kl_coef"]) == (8, 1e-5, 512, 0.0)
    assert (m["sampling"]["temperature"], m["sampling"]["top_p"]) == (0.8, 0.9)
    assert m["loss_aggregation"] == "sequence_sum" and m["reward"] == "boxed_correctness"
    assert d["template"] == "math"
