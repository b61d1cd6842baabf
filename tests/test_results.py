"""The run-record schema: what a task declares is what it logs, and declarations survive JSON."""

from __future__ import annotations

import json

import pytest

from attnexp.runs.record import COST_NAMES, cost_metrics
from attnexp.tasks.classifier import classification_metrics
from attnexp.tasks.spec import MAX, MIN, TOP_K, Metric, Task, classification, recorded_task


@pytest.mark.parametrize("num_classes", [3, 5, 6, 10])
def test_the_classifier_computes_the_test_metrics_its_task_declares(num_classes):
    declared = [m.name for m in classification(num_classes).test_metrics]
    assert set(classification_metrics(num_classes).keys()) == set(declared)
    assert (f"acc_top{TOP_K}" in declared) == (num_classes > TOP_K)


def test_a_declared_metric_without_a_computation_is_refused_when_the_classifier_is_built(
    monkeypatch,
):
    from attnexp.tasks import classifier

    monkeypatch.setattr(classifier, "COMPUTED", {"acc": classifier.COMPUTED["acc"]})
    with pytest.raises(NotImplementedError, match=r"declares \['f1'\]"):
        classifier.classification_metrics(3)


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
