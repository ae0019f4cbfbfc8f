"""What each public PRM family sees: its released input format, built from a prompt and steps.

Each builder takes the tokenizer, the prompt and the step texts and returns ``PRMInput``:
the token ids and, for every step, the index of the token whose output is that step's
score. They reproduce the released inference code of each family, not an approximation of
it; ``tests/test_public_prms.py`` checks every rendered string against the model cards.

- Qwen2.5-Math-PRM (model card): a chat with the system prompt below, the problem as the
  user turn and ``"<extra_0>".join(steps) + "<extra_0>"`` as the assistant turn, rendered by
  the tokenizer's chat template and encoded as one string; read at every ``<extra_0>``.
- Skywork-o1-Open-PRM (``model_utils/io_utils.py: prepare_input``): ``bos + problem + "\\n"``
  encoded, then each step encoded on its own and followed by the step token ``"\\n"``;
  read at every appended step token.
- RLHFlow Llama3.1-8B-PRM (``math-rm/prm_evaluate.py``): a multi-turn chat, user turn 1 =
  ``problem + " " + step 1``, then one user turn per step, each answered by the assistant
  with ``"+"``; the score of step k is P("+") predicted at the token before the k-th
  assistant ``"+"``. RLHFlow runs one forward per step over the chat up to that step; with
  causal attention one forward over the whole chat gives the same numbers, so it is read
  once (exact as long as each turn ends in a special token, as in the Llama 3.1 template).

Steps arrive as rpp spans: trimmed, blank steps dropped (``reward_server.steps``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

# The system prompt of the Qwen2.5-Math-PRM model card (and of Qwen2.5-Math-Instruct).
QWEN_PRM_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class InputFormatError(ValueError):
    """A sample that cannot be put into the model's format without moving a score."""


@dataclass
class PRMInput:
    input_ids: list[int]
    read_positions: list[int]  # one token index per step, in step order


def token_positions(input_ids: list[int], token_id: int) -> list[int]:
    return [i for i, t in enumerate(input_ids) if t == token_id]


def qwen_math_prm_input(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    steps: list[str],
    system_prompt: str | None,
    separator: str,
    separator_id: int,
) -> PRMInput:
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": separator.join(steps) + separator},
    ]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    input_ids = tokenizer.encode(text)  # as the model card does (Qwen tokenizers add nothing)
    positions = token_positions(input_ids, separator_id)
    if len(positions) != len(steps):
        raise InputFormatError(
            f"{len(steps)} steps but {len(positions)} {separator!r} tokens in the input: the prompt "
            f"or a step holds {separator!r} itself; remove it from the text"
        )
    return PRMInput(input_ids, positions)


def skywork_prm_input(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    steps: list[str],
    bos_token: str,
    step_token_id: int,
) -> PRMInput:
    input_ids = tokenizer.encode(bos_token + prompt + "\n")
    positions: list[int] = []
    for step in steps:
        input_ids.extend(tokenizer.encode(step))
        positions.append(len(input_ids))
        input_ids.append(step_token_id)
    return PRMInput(input_ids, positions)


# Stands in for the assistant reply while the chat is rendered, so each reply's place in
# the text is found by a split instead of by rendering one prefix per step (quadratic).
_REPLY_SENTINEL = "\x00rpp-assistant-reply\x00"


def rlhflow_prm_conversation(prompt: str, steps: list[str], reply: str) -> list[dict[str, str]]:
    """The chat of ``prm_evaluate.py``: one user turn per step, each answered by ``reply``."""
    conversation: list[dict[str, str]] = []
    for k, step in enumerate(steps):
        conversation.append({"role": "user", "content": prompt + " " + step if k == 0 else step})
        conversation.append({"role": "assistant", "content": reply})
    return conversation


def rlhflow_prm_input(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    steps: list[str],
    reply: str,
    reply_id: int,
) -> PRMInput:
    if _REPLY_SENTINEL in prompt or any(_REPLY_SENTINEL in s for s in steps):
        raise InputFormatError("the text holds NUL characters rpp uses to place the assistant replies")
    marked = tokenizer.apply_chat_template(
        rlhflow_prm_conversation(prompt, steps, _REPLY_SENTINEL), tokenize=False
    )
    pieces = marked.split(_REPLY_SENTINEL)
    if len(pieces) != len(steps) + 1:
        raise InputFormatError(
            f"the chat template rendered {len(pieces) - 1} assistant replies for {len(steps)} steps"
        )
    text = reply.join(pieces)
    # The template must insert the reply verbatim, or the text above is not what it renders.
    if text != tokenizer.apply_chat_template(rlhflow_prm_conversation(prompt, steps, reply), tokenize=False):
        raise InputFormatError("the chat template changes the assistant reply text; cannot place the scores")
    reply_starts, offset = [], 0
    for piece in pieces[:-1]:
        offset += len(piece)
        reply_starts.append(offset)
        offset += len(reply)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    token_starts = [start for start, _ in offsets]
    positions: list[int] = []
    for k, start in enumerate(reply_starts):
        i = bisect.bisect_left(token_starts, start)
        if i == len(offsets) or tuple(offsets[i]) != (start, start + len(reply)) or input_ids[i] != reply_id:
            raise InputFormatError(
                f"the assistant reply {reply!r} of step {k} does not encode as its own token "
                f"(id {reply_id}); the tokenizer merged it with its neighbours"
            )
        positions.append(i - 1)  # the logits there predict the reply token
    return PRMInput(input_ids, positions)
