"""Prompt data: JSONL and parquet rows, errors that name the row, the seeded held-out split."""

from __future__ import annotations

import json

import pytest

from rpp_learner.data import load_records, split_held_out

ROWS = [
    {"question": "Add 12 + 7", "answer": 19},
    {"question": "计算 3 × 7", "answer": "21"},
    {"question": "Résumé: 40 + 2?", "answer": None},
]


def test_parquet_rows_load_like_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")  # in the dev extra; parquet is read through it
    parquet = tmp_path / "prompts.parquet"
    datasets.Dataset.from_list(
        [{**r, "answer": None if r["answer"] is None else str(r["answer"])} for r in ROWS]
    ).to_parquet(str(parquet))
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")

    from_parquet = load_records(parquet, prompt_field="question", reference_field="answer")
    from_jsonl = load_records(jsonl, prompt_field="question", reference_field="answer")
    assert from_parquet == from_jsonl
    assert [(r.prompt, r.reference, r.row) for r in from_parquet] == [
        ("Add 12 + 7", "19", 0), ("计算 3 × 7", "21", 1), ("Résumé: 40 + 2?", None, 2),
    ]


def test_bad_rows_are_named(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_records(bad_json)
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"prompt": "ok"}\n{"text": "where is the prompt?"}\n')
    with pytest.raises(ValueError, match=r"row 1: no non-empty string field 'prompt'.*data.prompt_field"):
        load_records(no_field)
    with pytest.raises(ValueError, match=r"unsupported data file type '.csv'"):
        (tmp_path / "x.csv").write_text("prompt\nhi\n")
        load_records(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(tmp_path / "missing.jsonl")


def test_held_out_split_is_seeded_and_disjoint(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(20)))
    records = load_records(path)
    train, held = split_held_out(records, 5, seed=3)
    assert len(train) == 15 and len(held) == 5
    assert {r.row for r in train}.isdisjoint(r.row for r in held)
    assert split_held_out(records, 5, seed=3) == (train, held)
    assert split_held_out(records, 5, seed=4)[1] != held
    with pytest.raises(ValueError, match="leaves no training prompts"):
        split_held_out(records, 20, seed=0)
