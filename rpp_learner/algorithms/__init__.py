"""Pure REINFORCE++ math: KL estimators, dense rewards, returns, advantages, whitening,
the clipped policy loss. Tensors in, tensors out; no I/O, no model."""

from rpp_learner.algorithms.advantages import (
    ESTIMATORS,
    AdvantageInputs,
    AdvantageOutput,
    compute_advantages,
    group_mean_std,
    register_estimator,
)
from rpp_learner.algorithms.kl import KL_KINDS, kl_penalty
from rpp_learner.algorithms.loss import (
    AGGREGATIONS,
    aggregate,
    clipped_pg_loss,
    global_sequence_count,
    global_token_count,
    policy_loss,
)
from rpp_learner.algorithms.returns import (
    CREDIT_MODES,
    discounted_suffix_sum,
    min_step_returns,
    process_returns,
    returns_to_go,
)
from rpp_learner.algorithms.rewards import (
    STEP_SCORE_TRANSFORMS,
    DenseRewards,
    RunningMeanStd,
    assemble_dense_rewards,
    last_token_index,
    pad_steps,
    place_step_rewards,
    step_rewards,
    transform_step_scores,
)
from rpp_learner.algorithms.whiten import masked_mean_var, masked_moments, masked_whiten

__all__ = [
    "AGGREGATIONS",
    "CREDIT_MODES",
    "ESTIMATORS",
    "KL_KINDS",
    "STEP_SCORE_TRANSFORMS",
    "AdvantageInputs",
    "AdvantageOutput",
    "DenseRewards",
    "RunningMeanStd",
    "aggregate",
    "assemble_dense_rewards",
    "clipped_pg_loss",
    "compute_advantages",
    "discounted_suffix_sum",
    "global_sequence_count",
    "global_token_count",
    "group_mean_std",
    "kl_penalty",
    "last_token_index",
    "masked_mean_var",
    "masked_moments",
    "masked_whiten",
    "min_step_returns",
    "pad_steps",
    "place_step_rewards",
    "policy_loss",
    "process_returns",
    "register_estimator",
    "returns_to_go",
    "step_rewards",
    "transform_step_scores",
]
