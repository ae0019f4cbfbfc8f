"""Train with rollout.engine=vllm and check, after every optimiser step, that vLLM decodes
what the policy being trained decodes:

    python -m tests.helpers.vllm_sync_train CONFIG OUT_JSON

After each step (and once before the first) it greedy-decodes the first training prompts
twice, with the trainer's vLLM engine and with Hugging Face ``generate`` on the trainer's
own policy, and writes both to OUT_JSON. This is rpp-train's ``Trainer``, run one step
at a time through its public ``train(stop_after=1)``.
"""

from __future__ import annotations

import json
import sys

from rpp_learner.config import load_config
from rpp_learner.rollout import SamplingParams
from rpp_learner.rollout.hf import HFRolloutEngine
from rpp_learner.trainer import Trainer


def main(config_path: str, out_path: str) -> None:
    cfg = load_config(config_path, [])
    checks = []
    with Trainer(cfg) as trainer:
        policy = trainer.acc.unwrap_model(trainer.policy)
        hf = HFRolloutEngine(policy, trainer.eos_ids, trainer.pad_id, batch_prompts=8)
        prompts = trainer.prompts[:6]
        greedy = SamplingParams(n=2, max_new_tokens=cfg.rollout.max_new_tokens, greedy=True)
        for step in range(cfg.total_steps + 1):
            if step:
                trainer.train(stop_after=1)
            ours, theirs = trainer.engine.generate(prompts, greedy, 0), hf.generate(prompts, greedy, 0)
            checks.append({
                "step": trainer.step,
                "vllm": [row[m.bool()].tolist() for row, m in zip(ours.response_ids, ours.response_mask, strict=True)],
                "hf": [
                    row[m.bool()].tolist() for row, m in zip(theirs.response_ids, theirs.response_mask, strict=True)
                ],
            })
    with open(out_path, "w") as f:
        json.dump(checks, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
