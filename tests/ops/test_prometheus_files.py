"""deploy/prometheus: the scrape config and the alert rules parse, name metrics that /metrics
serves, and (with promtool, Debian's `prometheus` package) pass its checks and its unit tests."""

import re
import shutil
import subprocess

import pytest
import yaml

from runs import metrics

from live import ROOT

pytestmark = pytest.mark.timeout(60)

PROMETHEUS = ROOT / "deploy" / "prometheus"
# the webhooks app declares these two (docs/deploy.md, "Watching Relay")
ELSEWHERE = {"relay_webhook_deliveries_total", "relay_webhook_oldest_pending_seconds"}
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool is not installed")


def served():
    names = {"relay_metrics_source_up"}
    for metric in metrics.catalogue():
        names.add(metric.name)
        if metric.type == "histogram":
            names.update(metric.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_the_alerts_name_only_metrics_that_are_served():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    named = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\brelay_[a-z_]+", rule["expr"])
    }
    assert named - ELSEWHERE <= served()
    assert named >= ELSEWHERE


def test_the_scrape_config_scrapes_metrics_with_the_token():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"


@needs_promtool
def test_promtool_passes_the_rules_and_their_tests():
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *command], cwd=PROMETHEUS, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_passes_the_config(tmp_path):
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "relay-alerts.yml")
    (tmp_path / "relay-metrics-token").write_text("token\n")
    text = (PROMETHEUS / "prometheus.yml").read_text().replace("/etc/prometheus", str(tmp_path))
    (tmp_path / "prometheus.yml").write_text(text)
    done = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
