"""The REINFORCE++ training loop. Read ``Trainer.train`` top to bottom:

    rollout -> (reward services || old/ref log-probs, first update forward)
            -> dense rewards + advantages
            -> ppo_epochs x shuffled mini-batches (grad accumulation, clip, AdamW, LR schedule)
            -> log, evaluate, checkpoint

The reward calls for each generated chunk are submitted as soon as it is decoded and
collected after the log-prob forwards and the update's first forward, so network time
hides behind the rest of generation and the forwards. With one optimiser step per rollout,
the old-policy forward is skipped where the update's own log-probs can serve: pi_old is the
policy itself during the update (see ``rpp_learner.update``).

Under ``accelerate launch`` every process generates and scores its own share of the
prompts; whitening, token counts and metrics are all-reduced, so N processes compute what
one process would on the whole batch. Under FSDP2 the policy and the reference are sharded
and rollouts come from a full copy of the policy (see ``rpp_learner.sharding``).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoTokenizer, get_scheduler

from reward_server.client import RewardServiceUnavailable
from reward_server.types import ServiceInfo
from rpp_learner import checkpoint as ckpt
from rpp_learner.algorithms.advantages import AdvantageInputs, compute_advantages
from rpp_learner.algorithms.distributed import all_reduce_sum
from rpp_learner.algorithms.kl import kl_penalty
from rpp_learner.algorithms.rewards import RunningMeanStd
from rpp_learner.config import Config, ConfigError, save_config
from rpp_learner.data import PromptOrder, encode_prompt, load_records, split_held_out
from rpp_learner.forward import batched_logprobs
from rpp_learner.metrics_log import MetricsLogger
from rpp_learner.models import check_model_path, load_causal_lm
from rpp_learner.rollout import SamplingParams, check_engine, eos_token_ids, make_engine
from rpp_learner.rollout.base import RolloutBatch
from rpp_learner.samples import Rollout, concat_rollouts, reward_samples, save_rollout, with_text
from rpp_learner.scoring import RewardClients, ScoredBatch, assemble_scores, degenerate_steps
from rpp_learner.sharding import (
    full_parameters,
    is_sharded,
    refuse_gradient_accumulation,
    refuse_unsupported_sharding,
    shard_frozen,
)
from rpp_learner.step_stats import rollout_metrics, sampler_mismatch_metrics
from rpp_learner.update import is_on_policy, one_micro_batch, run_update

_SCHEDULERS = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def adamw_implementation(choice: str, model: torch.nn.Module, device_type: str, *, sharded: bool) -> dict[str, bool]:
    """AdamW keyword arguments for ``optim.adamw_impl``; ``device_type``: where the model will train."""
    if choice == "fused":
        return {"fused": True}
    if choice == "foreach":
        return {"foreach": True}
    if choice == "loop":
        return {"foreach": False}
    floats = all(p.dtype.is_floating_point for p in model.parameters())
    if not sharded and floats and device_type in ("cpu", "cuda"):
        return {"fused": True}
    return {}  # torch decides (foreach on CUDA, the loop elsewhere)


@dataclass
class SampledRollout:
    """One step's rollout, its reward calls in flight and (pipelined) the log-probs of the
    weights that sampled it."""

    step: int
    rollout: Rollout
    pending: list[Future]
    behaviour_logp: torch.Tensor | None


class TrainingStopped(RuntimeError):
    """The run stopped early on purpose (rewards unavailable or failing); a checkpoint was saved."""

    exit_code = 3


class Trainer:
    def __init__(self, config: Config, accelerator: Accelerator | None = None):
        self.cfg = cfg = config
        precision = cfg.optim.mixed_precision
        self.acc = accelerator or Accelerator(**({} if precision == "auto" else {"mixed_precision": precision}))
        if precision != "auto" and self.acc.mixed_precision != precision:
            raise ConfigError(
                f"optim.mixed_precision={precision!r}, but this process's accelerate state is already "
                f"{self.acc.mixed_precision!r} (accelerate keeps one per process); set them alike"
            )
        refuse_unsupported_sharding(self.acc)
        refuse_gradient_accumulation(self.acc)
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self._check_sizes()
        set_seed(cfg.seed)
        self.out_dir = Path(cfg.output_dir)

        # Cheap checks first: data, model path and reward services, before any model loads.
        records = load_records(cfg.data.train_path, cfg.data.prompt_field, cfg.data.reference_field)
        if cfg.data.eval_path:
            self.train_records = records
            self.eval_records = load_records(cfg.data.eval_path, cfg.data.prompt_field, cfg.data.reference_field)
        else:
            self.train_records, self.eval_records = split_held_out(records, cfg.data.eval_size, cfg.seed)
        cfg.model.path = check_model_path(cfg.model.path)  # a checkpoint dir means its policy/
        check_engine(cfg)
        self.scorer = RewardClients(cfg.rewards.services)
        self.separators: dict[str, str] = {}
        self._warned_steps: set[str] = set()
        self.service_infos: dict[str, ServiceInfo] = {}
        if cfg.rewards.check_at_start:
            self.service_infos = self.scorer.check(cfg.rewards.connect_timeout_s)
            self.separators = {name: info.step_separator for name, info in self.service_infos.items()}

        resume_from = ckpt.find_checkpoint(cfg.checkpoint.resume, cfg.output_dir) if cfg.checkpoint.resume else None
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer_path or cfg.model.path)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id  # padding is masked; any id works
        self.prompts = [self._encode(r.prompt) for r in self.train_records]
        self.order = PromptOrder(len(self.train_records), cfg.seed, cfg.data.shuffle)

        policy_path = str(resume_from / "policy") if resume_from else cfg.model.path
        # FSDP2 with mixed precision trains fp32 master weights (accelerate upcasts them) and
        # checkpoints save those; load them in fp32 too, or a resume would round them.
        fp32_master = self.acc.is_fsdp2 and self.acc.mixed_precision != "no"
        policy = load_causal_lm(policy_path, cfg.model, dtype=torch.float32 if fp32_master else None)
        if cfg.model.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        self.ref_model = None
        if cfg.algo.kl_coef != 0.0 or cfg.algo.kl_loss_coef != 0.0:
            self.ref_model = load_causal_lm(cfg.model.path, cfg.model).to(self.acc.device).requires_grad_(False)
        optimizer = torch.optim.AdamW(
            policy.parameters(),
            lr=cfg.optim.lr,
            betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2),
            eps=cfg.optim.adam_eps,
            weight_decay=cfg.optim.weight_decay,
            **adamw_implementation(cfg.optim.adamw_impl, policy, self.acc.device.type, sharded=self.acc.is_fsdp2),
        )
        # Not passed to accelerator.prepare: its wrapper steps the schedule once per process.
        self.scheduler = get_scheduler(
            _SCHEDULERS[cfg.optim.lr_scheduler],
            optimizer,
            num_warmup_steps=cfg.optim.warmup_steps,
            num_training_steps=cfg.total_steps * cfg.algo.ppo_epochs * self.mini_batches_per_epoch,
        )
        self.policy, self.optimizer = self.acc.prepare(policy, optimizer)
        # Dropout stays off (eval mode) in every pass: the ratio must be exactly 1 before the
        # first update, and the log-probs must match the ones the sampler used.
        self.policy.eval()
        self.eos_ids = eos_token_ids(self.tokenizer, policy)
        # pi_old == the policy during the update: skip its forward when the update's own can
        # serve, i.e. nothing needs pi_old before the first loss (no KL in the reward) or the
        # update's first forward covers the whole rollout (run_update hands it over).
        # Pipelined, pi_old is the policy that sampled, a step older: always computed.
        self.pipelined = cfg.rollout.pipeline_depth > 0
        self.skip_old_forward = not self.pipelined and is_on_policy(cfg) and (
            cfg.algo.kl_coef == 0.0 or one_micro_batch(cfg, self.world)
        )
        rollout_model, own_copy = self.acc.unwrap_model(self.policy), False
        if self.ref_model is not None and is_sharded(rollout_model):
            shard_frozen(self.ref_model)  # FSDP2: the reference is sharded like the policy
        if is_sharded(rollout_model) and cfg.rollout.engine == "hf":
            # FSDP2: generating from the sharded policy would all-gather every layer at every
            # token, in lockstep over processes (whose responses end at different lengths).
            # Generate from a full copy instead, refreshed after each update like vLLM's.
            rollout_model = load_causal_lm(policy_path, cfg.model).to(self.acc.device).eval().requires_grad_(False)
            own_copy = True
        self.engine = make_engine(cfg, rollout_model, self.eos_ids, self.pad_id, owns_weights=own_copy)
        self.reward_stats = RunningMeanStd()

        self.step = 0
        # The rollout the next update trains on, once sampled: pipelined, it is sampled a step
        # early (during the previous step's reward wait) and a checkpoint saves it.
        self._in_hand: SampledRollout | None = None
        if resume_from is not None:
            state = ckpt.load_checkpoint(
                resume_from, accelerator=self.acc, policy=self.policy, optimizer=self.optimizer,
                scheduler=self.scheduler,
            )
            self.step = state["step"]
            self.reward_stats.load_state_dict(state["reward_stats"])
            if self.pipelined:
                self._in_hand = self._load_in_hand(resume_from, state)
        if self.acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the reward channels and their I/O thread. Idempotent. ``train()`` leaves them
        open so that ``evaluate()`` and further ``train()`` calls work after it."""
        self.scorer.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop

    def train(self, stop_after: int | None = None) -> dict[str, Any]:
        """Run to ``total_steps`` (or ``stop_after`` more steps, then checkpoint and return;
        call again to continue). Returns a summary: first/last/all metrics, paths."""
        cfg = self.cfg
        last_step = cfg.total_steps if stop_after is None else min(cfg.total_steps, self.step + stop_after)
        logger = (
            MetricsLogger(self.out_dir, cfg.logging, total_steps=cfg.total_steps, start_step=self.step)
            if self.acc.is_main_process
            else None
        )
        history: list[dict[str, float]] = []
        start: dict[str, float] = {}
        try:
            if self.step == 0 and cfg.eval.every_steps and self.eval_records:
                start = self.evaluate()  # where the curves start: the policy before any update
                if logger is not None:
                    logger.log(0, start)
            while self.step < last_step:
                metrics = self.train_step(self.step + 1)
                self.step += 1
                if cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0 and self.eval_records:
                    metrics.update(self.evaluate())
                history.append(metrics)
                if logger is not None:
                    logger.log(self.step, metrics)
                if cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0:
                    self.save()
            final = self.save()
        finally:
            plot = logger.close() if logger is not None else None
        return {
            "steps": self.step,
            "start": start,  # evaluation before the first step (empty if resumed or no eval)
            "first": history[0] if history else {},
            "last": history[-1] if history else {},
            "history": history,
            "checkpoint": str(final),
            "plot": str(plot) if plot else None,
            "output_dir": str(self.out_dir),
        }

    def train_step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        # Each generated chunk goes to the reward services at once; they are collected
        # after the update's first forward, so the services work while this thread
        # generates the next chunks, runs the reference and old-policy forwards (and,
        # pipelined, the whole of the next step's rollout) and the first update forward.
        current = self._in_hand if self._in_hand is not None and self._in_hand.step == step else self._sample(step)
        self._in_hand = current  # a checkpoint saved before this update resumes with it
        rollout, b = current.rollout, current.rollout.batch
        t_rollout = time.perf_counter()
        ref_logp = None
        if self.ref_model is not None:
            # Under the policy's autocast too: pi_old and pi_ref then differ only by their
            # weights, and the KL is exactly 0 before the first update.
            with self.acc.autocast():
                ref_logp = self._logprobs(self.ref_model, b)
        if self.pipelined:
            old_logp = current.behaviour_logp
        else:
            old_logp = None if self.skip_old_forward else self._logprobs(self.policy, b)
        t_forward = time.perf_counter()
        upcoming = None
        if self.pipelined and step < self.cfg.total_steps:
            upcoming = self._sample(step + 1)  # with the weights before this update
        t_next = time.perf_counter()
        waited: dict[str, Any] = {}

        def advantages_for(on_policy_logp: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            """Called by the update after its first forward: the services scored meanwhile."""
            t_wait = time.perf_counter()
            scored = self._collect_scores(current.pending, rollout)
            waited["s"] = time.perf_counter() - t_wait
            mask = b.response_mask * scored.valid.unsqueeze(1)  # failed samples leave the update
            pi_old = old_logp if old_logp is not None else on_policy_logp
            if pi_old is None and self.cfg.algo.kl_coef != 0.0:  # the KL reward would be silently 0
                raise RuntimeError("the KL in the reward needs pi_old, but neither forward gave it")
            adv = self._advantages(rollout, scored, mask, pi_old, ref_logp)
            waited.update(scored=scored, adv=adv)
            return adv.advantages, adv.mask  # algo.drop_truncated may have dropped more rows

        update = run_update(
            self.cfg, self.acc, self.policy, self.optimizer, self.scheduler,
            b=b, old_logp=old_logp, ref_logp=ref_logp, advantages_for=advantages_for, seed=self._seed(step),
        )
        scored, adv = waited["scored"], waited["adv"]
        mask = adv.mask
        if self.engine.owns_weights:  # its own copy (vLLM, or HF under FSDP2): push the update
            self.engine.load_weights(full_parameters(self.acc.unwrap_model(self.policy)))
        self._in_hand = upcoming
        t_end = time.perf_counter()

        old_logp = update.logp if old_logp is None else old_logp  # on-policy: the update's own
        if self.cfg.logging.save_rollouts:
            path = self.out_dir / "rollouts" / f"step_{step:06d}_rank{self.rank}.pt"
            save_rollout(path, rollout, scored, adv, old_logp)
        metrics = rollout_metrics(b, scored, mask, old_logp, old_logp if ref_logp is None else ref_logp)
        metrics.update(sampler_mismatch_metrics(b, old_logp))
        metrics.update(update.metrics)
        lone = all_reduce_sum(torch.tensor(adv.metrics["advantages/lone_samples"]))
        metrics["advantages/lone_fraction"] = lone.item() / (len(rollout.texts) * self.world)
        metrics["rollout/policy_lag"] = float(step - 1 - rollout.policy_version)  # updates behind
        metrics.update({
            "time/step_s": t_end - t0,
            "time/rollout_s": t_rollout - t0,
            "time/logprob_s": t_forward - t_rollout,
            "time/next_rollout_s": t_next - t_forward,
            "time/reward_wait_s": waited["s"],
            "time/update_s": t_end - t_next - waited["s"],
        })
        return metrics

    # ------------------------------------------------------------------ stages

    def _rollout(self, step: int) -> tuple[Rollout, list[Future]]:
        """This process's share of the step's prompts, sampled, and the reward calls for
        them, submitted chunk by chunk as generation goes."""
        cfg = self.cfg.rollout
        per_rank = cfg.prompts_per_step // self.world
        first = (step - 1) * cfg.prompts_per_step + self.rank * per_rank  # global position
        indices = self.order.indices(first, per_rank)
        params = SamplingParams(
            n=cfg.samples_per_prompt,
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
        )
        n = cfg.samples_per_prompt
        records = [self.train_records[i] for i in indices for _ in range(n)]
        groups = torch.arange(first, first + per_rank).repeat_interleave(n)
        parts, pending = [], []
        # Seed = f(step, global position): the same samples whatever the number of processes.
        chunks = self.engine.generate_chunks([self.prompts[i] for i in indices], params, seed=self._seed(step) + first)
        for start, chunk in chunks:
            rows = slice(start * n, start * n + len(chunk))
            part = with_text(chunk, records[rows], groups[rows], self.tokenizer, self.eos_ids)
            pending.append(self.scorer.submit(reward_samples(part, step, self.rank, first_index=rows.start)))
            parts.append(part)
        return concat_rollouts(parts, self.pad_id), pending

    def _sample(self, step: int) -> SampledRollout:
        """Step ``step``'s rollout under the weights as they are now, its reward calls
        submitted; pipelined, with the log-probs of these weights (the behaviour policy)."""
        rollout, pending = self._rollout(step)
        rollout.policy_version = self.step
        behaviour = self._logprobs(self.policy, rollout.batch) if self.pipelined else None
        return SampledRollout(step, rollout, pending, behaviour)

    def _logprobs(self, model, batch: RolloutBatch) -> torch.Tensor:
        return batched_logprobs(
            model,
            batch.prompt_ids,
            batch.prompt_mask,
            batch.response_ids,
            batch.response_mask,
            micro_batch_size=self.cfg.optim.micro_batch_size,
            temperature=self.cfg.rollout.temperature,
            device=self.acc.device,
            share_prompts=self.cfg.optim.shared_prompt_forward,
        )

    def _collect_scores(self, pending: list[Future], rollout: Rollout) -> ScoredBatch:
        """Wait for the services; stop every process together if any could not reach one."""
        error: RewardServiceUnavailable | None = None
        try:
            parts = [future.result() for future in pending]  # one per chunk, in order
            results = {name: [r for part in parts for r in part[name]] for name in parts[0]}
        except RewardServiceUnavailable as exc:
            error, results = exc, None
        if all_reduce_sum(torch.tensor(float(error is not None))).item() > 0:
            self.save()
            where = f": {error}" if error else " on another process"
            raise TrainingStopped(
                f"a reward service became unreachable{where}. Checkpoint saved at step {self.step} "
                f"in {ckpt.checkpoint_root(self.out_dir)}; restart the service and rerun with "
                "--checkpoint.resume latest"
            )
        scored = assemble_scores(
            results, self.cfg.rewards.services, rollout.texts, rollout.token_end_bytes,
            rollout.batch.truncated.tolist(), separators=self.separators,
        )
        self._warn_degenerate_steps(scored)
        failed = all_reduce_sum(torch.tensor(float((~scored.valid).sum())))
        total = len(rollout.texts) * self.world
        if failed.item() > self.cfg.rewards.max_failure_fraction * total:
            self.save()
            raise TrainingStopped(
                f"{int(failed.item())} of {total} samples got no reward this step, more than "
                f"rewards.max_failure_fraction={self.cfg.rewards.max_failure_fraction}. First errors: "
                f"{'; '.join(scored.first_errors) or '(on another process)'}. Checkpoint saved."
            )
        return scored

    def _warn_degenerate_steps(self, scored: ScoredBatch) -> None:
        """Once per service and run, loudly: its steps look degenerate (see degenerate_steps)."""
        for name, counts in scored.step_counts.items():
            why = degenerate_steps(counts)
            if why is None or name in self._warned_steps or not self.acc.is_main_process:
                continue
            self._warned_steps.add(name)
            separator = self.separators.get(name, "\n\n")
            print(
                f"rpp-train: WARNING: process service {name!r}: {why} at step {self.step + 1}; it splits "
                f"responses on {separator!r}. Dense credit has collapsed to one score per response: check "
                "the service's --step-separator against how the policy writes its steps.",
                file=sys.stderr, flush=True,
            )

    def _advantages(self, rollout: Rollout, scored: ScoredBatch, mask, old_logp, ref_logp):
        algo = self.cfg.algo
        outcome = scored.outcome
        if algo.normalize_reward:
            self.reward_stats.update(outcome[scored.valid])
            outcome = self.reward_stats.normalize(outcome)
        if old_logp is None or ref_logp is None:  # no KL term, or KL only in the loss
            kl = torch.zeros(mask.shape)
        else:
            kl = kl_penalty(old_logp, ref_logp, algo.kl_estimator)
        inputs = AdvantageInputs(
            mask=mask,
            kl=kl,
            outcome=outcome,
            step_token_index=scored.step_token_index,
            step_scores=scored.step_scores,
            step_weights=scored.step_weights,
            group_index=rollout.group_index,
            truncated=rollout.batch.truncated,
            valid=scored.valid,  # failed samples stay out of their group's mean
        )
        return compute_advantages(
            algo.estimator,
            inputs,
            kl_coef=algo.kl_coef,
            gamma=algo.gamma,
            credit=algo.process_credit,
            process_coef=1.0,  # each step carries its service's weight (step_weights)
            score_transform=algo.step_score_transform,
            reward_clip=(-algo.reward_clip, algo.reward_clip),
            reject_below=algo.first_error_reject_below,
            correct_threshold=algo.correct_outcome_threshold,
            truncated_outcome=algo.truncated_outcome,
            drop_truncated=algo.drop_truncated,
        )

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy responses to the held-out prompts; accuracy = share with outcome >= threshold."""
        cfg = self.cfg
        names = [s.name for s in cfg.rewards.services if s.kind == "outcome"]
        if not self.eval_records or not names:
            return {}
        service = cfg.eval.service or names[0]
        records = self.eval_records[: cfg.eval.max_prompts][self.rank :: self.world]
        correct = scored = 0.0
        if records:
            budget = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
            params = SamplingParams(n=1, max_new_tokens=budget, greedy=True)
            batch = self.engine.generate([self._encode(r.prompt) for r in records], params, seed=0)
            rollout = with_text(batch, records, torch.arange(len(records)), self.tokenizer, self.eos_ids)
            results = self.scorer.submit(reward_samples(rollout, -1, self.rank), only=[service]).result()[service]
            for res in results:
                if res.ok and res.outcome is not None:
                    scored += 1
                    correct += float(res.outcome >= cfg.eval.accuracy_threshold)
        counts = all_reduce_sum(torch.tensor([correct, scored], dtype=torch.float64))
        total = max(counts[1].item(), 1.0)
        return {"eval/accuracy": counts[0].item() / total, "eval/scored": counts[1].item()}

    # ------------------------------------------------------------------ helpers

    def save(self) -> Path:
        in_hand = None
        if self._in_hand is not None:
            r = self._in_hand
            in_hand = {"step": r.step, "rollout": r.rollout, "behaviour_logp": r.behaviour_logp}
        return ckpt.save_checkpoint(
            self.out_dir,
            accelerator=self.acc,
            policy=self.policy,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state={
                "step": self.step,
                "data_position": self.step * self.cfg.rollout.prompts_per_step,
                "reward_stats": self.reward_stats.state_dict(),
                "pipeline_depth": self.cfg.rollout.pipeline_depth,
                "processes": self.world,
            },
            keep_last=self.cfg.checkpoint.keep_last,
            rank_state=in_hand,
        )

    def _load_in_hand(self, path: Path, state: dict[str, Any]) -> SampledRollout | None:
        """The pipelined rollout a checkpoint holds, its reward calls sent again (the weights
        that sampled it are a step older than the checkpoint's, so it cannot be regenerated)."""
        if state.get("pipeline_depth", 0) == 0:
            return None  # saved synchronous: the next rollout is sampled from these weights
        if state.get("processes", self.world) != self.world:
            raise ConfigError(
                f"checkpoint {path} was saved by {state['processes']} processes in pipelined mode "
                f"(rollout.pipeline_depth=1); resume it with {state['processes']} processes, or resume "
                "with rollout.pipeline_depth=0 (the first step then samples from the checkpoint's weights)"
            )
        saved = ckpt.load_rank_state(path, self.rank)
        if saved is None:
            return None  # saved at the last step: nothing was sampled ahead
        rollout: Rollout = saved["rollout"]
        pending = [self.scorer.submit(reward_samples(rollout, saved["step"], self.rank))]
        return SampledRollout(saved["step"], rollout, pending, saved["behaviour_logp"])

    def _encode(self, text: str) -> list[int]:
        d = self.cfg.data
        return encode_prompt(
            self.tokenizer, text, apply_chat_template=d.apply_chat_template,
            system_prompt=d.system_prompt, max_tokens=d.max_prompt_tokens,
        )

    def _seed(self, step: int) -> int:
        return self.cfg.seed * 1_000_003 + step * 10_007

    def _check_sizes(self) -> None:
        cfg, w = self.cfg, self.world
        if cfg.rollout.prompts_per_step % w:
            raise ConfigError(
                f"rollout.prompts_per_step ({cfg.rollout.prompts_per_step}) must be divisible by the {w} processes"
            )
        if cfg.optim.mini_batch_size % w:
            raise ConfigError(
                f"optim.mini_batch_size ({cfg.optim.mini_batch_size}) must be divisible by the {w} processes"
            )

    @property
    def mini_batches_per_epoch(self) -> int:
        return self.cfg.rollout.prompts_per_step * self.cfg.rollout.samples_per_prompt // self.cfg.optim.mini_batch_size
