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

from rpp_learner.config import ConfigError


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    reference: str | None
    row: int  # line/row number in the source file, for error messages and ids


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a leading BOM is not data
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from None
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return rows


def _read_parquet(path: Path) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"reading {path} needs the datasets package: pip install 'rpp[data]'") from None
    try:
        return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"{path}: cannot read it as parquet ({exc})") from None


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    raise ConfigError(f"{path}: unsupported data file type {path.suffix!r}; use .jsonl or .parquet")


def load_records(
    path: str | Path, prompt_field: str = "prompt", reference_field: str = "reference"
) -> list[PromptRecord]:
    """Read every row; each needs ``prompt_field`` (a string), ``reference_field`` is optional."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"data file {str(path)!r} is a directory; name a .jsonl or .parquet file")
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    records = []
    for i, row in enumerate(_read_rows(path)):
        prompt = row.get(prompt_field) if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt:
            raise ConfigError(
                f"{path} row {i}: no non-empty string field {prompt_field!r} "
                f"(set data.prompt_field to the name of your prompt column)"
            )
        reference = row.get(reference_field)
        records.append(PromptRecord(prompt, None if reference is None else str(reference), i))
    if not records:
        raise ConfigError(f"{path} holds no prompts")
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
    if not ids:
        # transformers builds an empty tokenizer from a model directory without tokenizer files.
        raise ConfigError(
            f"the prompt {text[:40]!r} encodes to no tokens with the tokenizer of {tokenizer.name_or_path!r} "
            f"({len(tokenizer)} tokens in its vocabulary); a model directory without its tokenizer files "
            "(tokenizer.json, tokenizer_config.json) gives such a tokenizer: set model.tokenizer_path to "
            "one that has them"
        )
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
