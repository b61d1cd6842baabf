"""The run-record schema: what a task declares is what it logs, and declarations survive JSON."""

from __future__ import annotations

import json

import pytest

from attnexp.classifier import classification_metrics
from attnexp.results import (
    COST_NAMES,
    MAX,
    MIN,
    Metric,
    Task,
    classification,
    cost_metrics,
    recorded_task,
)


@pytest.mark.parametrize("num_classes", [3, 5, 6, 10])
def test_classification_declares_exactly_the_test_metrics_the_classifier_computes(num_classes):
    declared = {m.name for m in classification(num_classes).test_metrics}
    assert declared == set(classification_metrics(num_classes).keys())


def test_a_task_survives_results_json_and_knows_each_keys_direction():
    task = classification(10)
    assert Task.from_json(json.loads(json.dumps(task.to_json()))) == task
    assert recorded_task({"task": task.to_json()}) == task
    assert recorded_task({}) == classification()  # an old file
    assert task.primary.name == "acc"
    assert task.direction_of("val/acc_best") == MAX and task.direction_of("val/loss") == MIN
    assert task.direction_of("test/loss") is None  # classification tests no loss
    assert "val/acc_top5" in task.keys() and "val/acc_top5" not in classification(5).keys()


def test_a_metric_with_an_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="direction must be one of max, min, got 'up'"):
        Metric("bpc", "up", "bpc")
    with pytest.raises(ValueError, match="no metric with a test stage"):
        Task.from_json({"name": "x", "metrics": [{"name": "l", "direction": MIN, "label": "l",
                                                  "stages": ["val"]}]})  # fmt: skip


def test_cost_metrics_are_the_recorded_costs_under_run():
    results = dict.fromkeys(COST_NAMES) | {"params": 12, "throughput": 3.5, "other": 1}
    assert cost_metrics(results) == {"run/params": 12, "run/throughput": 3.5}
