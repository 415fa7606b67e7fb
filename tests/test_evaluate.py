"""Evaluation tables: hand-computed action-wise averages (fast); a trained checkpoint is
evaluated end to end in tests/test_train.py (it needs a Ray run)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from hpe_ray.evaluate import AVERAGE_ROW, EvalResult, format_table, write_tables
from hpe_ray.metrics import base_action
from hpe_ray.metrics import per_action_table


def _result(hypotheses: int = 1) -> EvalResult:
    # Walking: frames 10 and 30 mm -> 20; Sitting: one frame 50 mm. Action-wise average 35,
    # not the frame mean 30.
    actions = np.array(["Walking", "Walking", "Sitting"])
    errors = {"mpjpe": np.array([10.0, 30.0, 50.0]), "pa_mpjpe": np.array([5.0, 15.0, 40.0])}
    tables = {"MPJPE (P1)": per_action_table(errors["mpjpe"], actions),
              "PA-MPJPE (P2)": per_action_table(errors["pa_mpjpe"], actions)}
    return EvalResult(checkpoint=Path("run/checkpoint_x/checkpoint.pt"), split="test", modality="pose2d",
                      hypotheses=hypotheses, errors=errors, actions=actions, tables=tables)


def test_base_action_merges_sub_actions():
    assert [base_action(a) for a in ("Walking 1", "Walking", "SittingDown 2", "WalkDog")] == [
        "Walking", "Walking", "SittingDown", "WalkDog"]


def test_write_tables_csv_has_every_action_and_the_action_wise_average(tmp_path):
    csv_path, md_path = write_tables(_result(), tmp_path / "out")
    assert csv_path.name == "test_pose2d_k1.csv" and md_path.name == "test_pose2d_k1.md"
    with csv_path.open() as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["Action", "Frames", "MPJPE (P1)", "PA-MPJPE (P2)"],
        ["Sitting", "1", "50.0", "40.0"],
        ["Walking", "2", "20.0", "10.0"],
        [AVERAGE_ROW, "3", "35.0", "25.0"],
    ]


def test_format_table_is_markdown_and_states_the_averaging():
    text = format_table(_result())
    assert "| Walking | 2 | 20.0 | 10.0 |" in text
    assert f"| {AVERAGE_ROW} | 3 | 35.0 | 25.0 |" in text
    assert "action-wise" in text and "unweighted mean over actions" in text


def test_evaluate_checkpoint_rejects_bad_hypotheses(tmp_path):
    from hpe_ray.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match="hypotheses must be >= 1"):
        evaluate_checkpoint(tmp_path, tmp_path, hypotheses=0)


def _pose_sample(key: str, offset_mm, action: str):
    from hpe_ray.camera import H36M_INTRINSICS
    from hpe_ray.data.sample import PoseSample

    pose_mm = np.zeros((17, 3), np.float32) + [0, 0, 5000]
    pose_mm[1:] += offset_mm  # every joint but the root moved by the same offset
    return PoseSample(key=key, keypoints_2d_px=np.full((17, 2), 500.0, np.float32), pose_3d_cam_mm=pose_mm,
                      intrinsics=H36M_INTRINSICS["54138969"], subject="S1", action=action, camera_id="c",
                      frame=0)


def test_mean_pose_tables_hand_computed(tmp_path):
    from hpe_ray.data.shards import write_shards
    from hpe_ray.evaluate import mean_pose_tables

    # Training mean: every joint but the root 200 mm right of it. Test joints 300 mm down and
    # 400 mm behind the root: each joint sqrt(200^2 + 300^2) and sqrt(200^2 + 400^2) mm off, the
    # root exact, so MPJPE is 16/17 of that; Average: the action-wise mean of the two.
    splits = {"train": [_pose_sample("a", [100, 0, 0], "Walking"), _pose_sample("b", [300, 0, 0], "Walking")],
              "test": [_pose_sample("c", [0, 300, 0], "Walking 1"), _pose_sample("d", [0, 0, 400], "Sitting")]}
    write_shards(splits, tmp_path / "data", source="test", settings={})
    tables = mean_pose_tables(tmp_path / "data")
    walking, sitting = math.hypot(200, 300) * 16 / 17, math.hypot(200, 400) * 16 / 17
    assert tables["MPJPE (P1)"] == pytest.approx({"Sitting": sitting, "Walking": walking,
                                                  "Average": (walking + sitting) / 2})
    assert set(tables["PA-MPJPE (P2)"]) == {"Sitting", "Walking", "Average"}


def test_compare_table_puts_models_side_by_side_with_gaps():
    from hpe_ray.evaluate import compare_table

    rows = {"VAE": {"MPJPE (P1)": {"Average": 50.04}, "MPJPE best of 10 (P1)": {"Average": 40.0}},
            "mean pose": {"MPJPE (P1)": {"Average": 234.56}}}
    assert compare_table(rows, "Input").splitlines() == [
        "| Input | MPJPE (P1) | MPJPE best of 10 (P1) |", "|---|---:|---:|",
        "| VAE | 50.0 | 40.0 |", "| mean pose | 234.6 | – |"]
