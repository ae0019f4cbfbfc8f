"""Prompt data: JSONL or parquet rows with a prompt and an optional reference answer.

The order of prompts is a pure function of (seed, position), so a resumed run picks up
exactly where it stopped from the position alone, whatever the number of processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    reference: str | None
    row: int  # line/row number in the source file, for error messages and ids


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        return rows
    if path.suffix == ".parquet":
        try:
            import datasets
        except ImportError:
            raise ImportError(f"reading {path} needs the datasets package: pip install 'rpp[data]'") from None
        return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))
    raise ValueError(f"{path}: unsupported data file type {path.suffix!r}; use .jsonl or .parquet")


def load_records(
    path: str | Path, prompt_field: str = "prompt", reference_field: str = "reference"
) -> list[PromptRecord]:
    """Read every row; each needs ``prompt_field`` (a string), ``reference_field`` is optional."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    records = []
    for i, row in enumerate(_read_rows(path)):
        prompt = row.get(prompt_field) if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(
                f"{path} row {i}: no non-empty string field {prompt_field!r} "
                f"(set data.prompt_field to the name of your prompt column)"
            )
        reference = row.get(reference_field)
        records.append(PromptRecord(prompt, None if reference is None else str(reference), i))
    if not records:
        raise ValueError(f"{path} holds no prompts")
    return records


def split_held_out(
    records: list[PromptRecord], eval_size: int, seed: int
) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """Hold out ``eval_size`` random rows (seeded) as the evaluation set."""
    if eval_size <= 0:
        return records, []
    if eval_size >= len(records):
        raise ValueError(f"data.eval_size {eval_size} leaves no training prompts ({len(records)} rows)")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:eval_size])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    *,
    apply_chat_template: bool,
    system_prompt: str | None,
    max_tokens: int,
) -> list[int]:
    """Prompt token ids; with the chat template when asked and available. Cut from the left."""
    if apply_chat_template and tokenizer.chat_template:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": text})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    else:
        body = f"{system_prompt}\n{text}" if system_prompt else text
        ids = tokenizer(body)["input_ids"]
    return ids[-max_tokens:]


class PromptOrder:
    """Which record comes at each global position: reshuffled every epoch, seeded."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self._cache: tuple[int, list[int]] | None = None

    def _epoch(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                perm = torch.randperm(self.size, generator=gen).tolist()
            else:
                perm = list(range(self.size))
            self._cache = (epoch, perm)
        return self._cache[1]

    def indices(self, start: int, count: int) -> list[int]:
        return [self._epoch(p // self.size)[p % self.size] for p in range(start, start + count)]
