"""Pure REINFORCE++ math: KL estimators, dense rewards, credit modes, returns, advantages,
whitening, the clipped policy loss. Tensors in, tensors out; no I/O, no model.

Three registries name what a config may select, and take a user's own additions:
``ESTIMATORS`` (``register_estimator``), ``CREDIT_MODES`` (``register_credit_mode``) and
``STEP_SCORE_TRANSFORMS`` (``register_step_score_transform``)."""

from rpp_learner.algorithms.advantages import (
    ESTIMATORS,
    AdvantageInputs,
    AdvantageOutput,
    Estimator,
    compute_advantages,
    register_estimator,
)
from rpp_learner.algorithms.groups import group_mean_std
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
    CreditInputs,
    CreditMode,
    discounted_suffix_sum,
    first_error_returns,
    min_step_returns,
    outcome_centered_step_rewards,
    place_step_rewards,
    process_returns,
    register_credit_mode,
    returns_to_go,
)
from rpp_learner.algorithms.rewards import (
    STEP_SCORE_TRANSFORMS,
    DenseRewards,
    RunningMeanStd,
    assemble_dense_rewards,
    last_token_index,
    pad_steps,
    register_step_score_transform,
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
    "CreditInputs",
    "CreditMode",
    "DenseRewards",
    "Estimator",
    "RunningMeanStd",
    "aggregate",
    "assemble_dense_rewards",
    "clipped_pg_loss",
    "compute_advantages",
    "discounted_suffix_sum",
    "first_error_returns",
    "global_sequence_count",
    "global_token_count",
    "group_mean_std",
    "kl_penalty",
    "last_token_index",
    "masked_mean_var",
    "masked_moments",
    "masked_whiten",
    "min_step_returns",
    "outcome_centered_step_rewards",
    "pad_steps",
    "place_step_rewards",
    "policy_loss",
    "process_returns",
    "register_credit_mode",
    "register_estimator",
    "register_step_score_transform",
    "returns_to_go",
    "step_rewards",
    "transform_step_scores",
]
