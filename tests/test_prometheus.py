"""Prometheus and Grafana: promtool accepts the config and rules, the rule unit tests pass, a real Prometheus
scrapes a running Chord, and every series the rules and the dashboard use is one Chord exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from live_server import free_port
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "chord-dashboard.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
# Exported only when the model runs on CUDA (metrics.GpuMemoryCollector); a CPU test server lacks them.
CUDA_ONLY = {"chord_gpu_memory_allocated_bytes", "chord_gpu_memory_reserved_bytes", "chord_gpu_memory_total_bytes"}
METRIC_NAME = re.compile(r"\b((?:chord|process)_[a-z0-9_]+)")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (apt-get install prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


@needs_promtool
@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),  # the scrape config, with its rule file
        ("check", "rules", "chord-rules.yml"),  # the rules alone
        ("test", "rules", "chord-rules.test.yml"),  # each threshold: fires past it, silent short of it
    ],
)
def test_promtool_accepts(args):
    out = promtool(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "chord-rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_rule_says_what_it_means_and_what_to_check_first():
    for rule in rules():
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), rule["alert"]
        assert "First run" in annotations.get("description", ""), rule["alert"]


def test_every_alert_of_the_issue_has_a_rule_and_a_unit_test():
    names = {rule["alert"] for rule in rules()}
    wanted = {
        "ChordDown", "ChordNotReady", "ChordModelStalled", "ChordLowSuccessRate", "ChordLatencyP95High",
        "ChordLatencyAverageHigh", "ChordGpuMemoryHigh", "ChordErrors", "ChordQueueSaturated",
        "ChordRestartBudgetExhausted",
    }  # fmt: skip
    assert wanted <= names
    unit_tests = (PROMETHEUS_DIR / "chord-rules.test.yml").read_text()
    for name in names:
        assert name in unit_tests, f"{name} has no promtool unit test"


def test_prometheus_scrapes_loopback_only():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    groups = [group for job in config["scrape_configs"] for group in job.get("static_configs", [])]
    groups += yaml.safe_load((PROMETHEUS_DIR / "chord-replicas.yml").read_text()) or []
    targets = [target for group in groups for target in group["targets"]]
    assert targets and all(t.startswith("127.0.0.1:") for t in targets), targets


def used_metric_names() -> dict[str, set[str]]:
    """Metric names in the rules' expressions and the dashboard's queries, by where they are used."""
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in METRIC_NAME.findall(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {rule['alert']}")
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in METRIC_NAME.findall(target["expr"]):
                used.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for variable in dashboard["templating"]["list"]:
        for name in METRIC_NAME.findall(json.dumps(variable.get("query", ""))):
            used.setdefault(name, set()).add(f"variable {variable['name']}")
    return used


def test_dashboard_covers_what_the_issue_asks():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in ("chord_requests_total", "chord_request_seconds_bucket", "chord_queue_depth", "chord_decode_rows_sum",
                 "chord_model_seconds_bucket", "chord_gpu_memory_allocated_bytes", "process_resident_memory_bytes",
                 "chord_model_ready", "process_start_time_seconds"):  # fmt: skip
        assert name in exprs, name
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"])


@pytest.mark.slow
def test_every_metric_in_the_rules_and_the_dashboard_is_in_metrics(server, sample_png):
    post_one(server.url, sample_png)  # histograms show their series once observed
    post_one(server.url, sample_png, prompt="")  # and labelled counters once counted: an error (422)
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    exported = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    metrics_source = (ROOT / "app" / "service" / "metrics.py").read_text()
    missing = {}
    for name, where in sorted(used_metric_names().items()):
        if name in exported:
            continue
        if name in CUDA_ONLY and f'"{name}"' in metrics_source:
            continue  # declared for CUDA; a CPU server does not export it
        missing[name] = sorted(where)
    assert not missing, f"not in /metrics: {missing}"


def post_one(url: str, image: str, prompt: str = "the red square") -> int:
    with open(image, "rb") as handle:
        files = {"image": ("sample.png", handle, "image/png")}
        return httpx.post(f"{url}/api/ground", files=files, data={"prompt": prompt}, timeout=120).status_code


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing (apt-get install prometheus)")
def test_a_real_prometheus_scrapes_chord(server, sample_png, tmp_path):
    """Debian's Prometheus on a loopback port, scraping the live server every second, with Chord's rules."""
    host_port = server.url.removeprefix("http://")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / "chord-rules.yml")]
    job = config["scrape_configs"][0]
    job.pop("file_sd_configs")
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [host_port]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [
            PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        statuses = [post_one(server.url, sample_png) for _ in range(3)]
        assert statuses == [200, 200, 200]
        query = 'sum by (job, status) (chord_requests_total{endpoint="/api/ground"})'
        deadline = time.monotonic() + 60
        answer: dict = {}
        answered: dict[str, float] = {}
        while time.monotonic() < deadline and prometheus.poll() is None:
            try:
                answer = httpx.get(f"{api}/query", params={"query": query}, timeout=5).json()
                result = answer["data"]["result"]
                answered = {r["metric"]["status"]: float(r["value"][1]) for r in result}
                if answered.get("200", 0) >= 3:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        print(f"\n$ curl -s '{api}/query' --data-urlencode 'query={query}'\n{json.dumps(answer)}")
        assert answered.get("200", 0) >= 3, (tmp_path / "prometheus.log").read_text()[-3000:]
        assert all(r["metric"]["job"] == "chord" for r in answer["data"]["result"])
        up = httpx.get(f"{api}/query", params={"query": 'up{job="chord"}'}, timeout=5).json()["data"]["result"]
        assert up[0]["value"][1] == "1"
        rule_groups = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        loaded = {rule["name"]: rule["health"] for group in rule_groups for rule in group["rules"]}
        assert set(loaded) == {rule["alert"] for rule in rules()}
        time.sleep(2)  # a couple of rule evaluations
        rule_groups = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        assert all(rule["health"] != "err" for group in rule_groups for rule in group["rules"]), rule_groups
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(timeout=15)
        log.close()
