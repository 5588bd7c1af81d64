"""CompletesFiles: a sample's file replaced whole, never half-written, no temporary file left behind."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from bson import ObjectId

from panel_pipeline.sampler.resources import CompletesFiles


def test_a_write_replaces_the_file_whole(tmp_path):
    files = CompletesFiles(directory=str(tmp_path / "completes"))
    sample_id = ObjectId()
    first = files.write(sample_id, pd.DataFrame({"user_id": ["a", "b"], "weight": [1.0, 1.0]}))
    assert first == tmp_path / "completes" / f"completes_{sample_id}.csv"
    files.write(sample_id, pd.DataFrame({"user_id": ["a"], "weight": [0.5]}))
    assert pd.read_csv(first).to_dict("records") == [{"user_id": "a", "weight": 0.5}]
    assert os.listdir(first.parent) == [first.name]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    files = CompletesFiles(directory=str(tmp_path))
    sample_id = ObjectId()
    path = files.write(sample_id, pd.DataFrame({"user_id": ["a"]}))

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(OSError, match="disk full"):
        files.write(sample_id, pd.DataFrame({"user_id": ["b"]}))
    monkeypatch.undo()
    assert pd.read_csv(path)["user_id"].tolist() == ["a"]
    assert os.listdir(tmp_path) == [path.name]
