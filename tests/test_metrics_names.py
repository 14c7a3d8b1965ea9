"""The stack's dashboard and alarms read the metrics the code emits, under the names it uses."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from imagepipe.core.metrics import (
    EMF_METRICS,
    EMF_REASON,
    EMF_REQUEST_DIMENSIONS,
    EMF_REQUEST_SECONDS,
    EMF_REQUESTS,
    EMF_STAGE_SECONDS,
)
from tests.conftest import load_template

NAMESPACE = "imagepipe/${AWS::StackName}"


def _resources(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in load_template()["Resources"].items() if r["Type"] == kind}


def _dashboard() -> dict[str, Any]:
    (dashboard,) = _resources("AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    return json.loads(body)


def _dashboard_metrics() -> set[str]:
    """Every metric of our namespace the dashboard draws, plainly or through SEARCH."""
    names = set()
    for widget in _dashboard()["widgets"]:
        for line in widget["properties"]["metrics"]:
            if isinstance(line[0], str) and line[0] == NAMESPACE:
                names.add(line[1])
            elif isinstance(line[0], dict) and "SEARCH" in line[0]["expression"]:
                expression = line[0]["expression"]
                ((namespace, dimensions),) = re.findall(r"""SEARCH\('\{"([^"]+)",([\w,]+)\}""",
                                                        expression)
                assert namespace == NAMESPACE
                assert set(dimensions.split(",")) in ({EMF_REASON}, set(EMF_REQUEST_DIMENSIONS))
                names |= set(re.findall(r'MetricName="(\w+)"', expression))
    return names


def _alarm_metrics() -> set[str]:
    """Every metric of our namespace an alarm watches."""
    names = set()
    for alarm in _resources("AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        watched = [props] + [m["MetricStat"]["Metric"] for m in props.get("Metrics", [])
                             if "MetricStat" in m]
        for metric in watched:
            if metric.get("Namespace") == {"Fn::Sub": NAMESPACE}:
                names.add(metric["MetricName"])
    return names


def _not_from_emf() -> set[str]:
    """Our namespace's metrics that come from elsewhere: log metric filters."""
    return {t["MetricName"] for f in _resources("AWS::Logs::MetricFilter").values()
            for t in f["Properties"]["MetricTransformations"]}


def test_the_dashboard_draws_only_metrics_the_code_emits() -> None:
    drawn = _dashboard_metrics()
    assert drawn <= set(EMF_METRICS)
    # The figures the operator asked for: throughput, failures, latency, every stage.
    assert {"ImagesProcessed", "ImagesFailed", "UploadToResultSeconds", EMF_REQUESTS,
            EMF_REQUEST_SECONDS, *EMF_STAGE_SECONDS.values()} <= drawn


def test_the_alarms_watch_only_metrics_something_emits() -> None:
    assert _alarm_metrics() <= set(EMF_METRICS) | _not_from_emf()
    assert {"ImagesFailed", "ImagesProcessed"} <= _alarm_metrics()


def test_the_dashboard_shows_backlog_and_instances() -> None:
    drawn = {(line[0], line[1]) for widget in _dashboard()["widgets"]
             for line in widget["properties"]["metrics"] if isinstance(line[0], str)}
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in drawn
    assert ("AWS/AutoScaling", "GroupInServiceInstances") in drawn


@pytest.mark.parametrize("launch_template", ["ProcessorLaunchTemplate", "WebLaunchTemplate"])
def test_emf_is_written_where_the_agent_ships_it(launch_template: str) -> None:
    template = load_template()
    user_data = template["Resources"][launch_template]["Properties"][
        "LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    emf_file = re.search(r"^IMAGEPIPE_METRICS_EMF_FILE=(\S+)$", user_data, re.M)
    assert emf_file is not None
    assert f"IMAGEPIPE_METRICS_NAMESPACE={NAMESPACE}\n" in user_data
    agent = json.loads(user_data.split("<<'AGENT'\n", 1)[1].split("\nAGENT\n", 1)[0])
    shipped = {f["file_path"]: f for f in agent["logs"]["logs_collected"]["files"]["collect_list"]}
    # A stream of its own, without the log's multi-line joining: each line one EMF event.
    assert "multi_line_start_pattern" not in shipped[emf_file.group(1)]
