"""Chord's resource log: one JSON line every RESOURCE_LOG_INTERVAL_S, and an ALERT line per crossed threshold.

Each line holds the machine's CPU and memory use, CPU %, memory % and RSS of the server and of its model
process, GPU memory per device (nvidia-smi, where present), disk use of the folders holding logs/ and the
model, and the requests, errors and average latency since the last line (from the server's /metrics).
Run by Supervisor as [program:chord-resources], whose stdout is logs/metrics.log, rotated like the other
logs. By hand:
    .venv/bin/python scripts/resource_log.py --once            # one line to stdout
    .venv/bin/python scripts/resource_log.py --output logs/metrics.log
Settings: RESOURCE_LOG_INTERVAL_S and the ALERT_* thresholds (docs/settings.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

INSTALL_ROOT = Path(__file__).resolve().parent.parent  # the checkout (or installation) this script is part of
sys.path.insert(0, str(INSTALL_ROOT))

from app.settings import Settings, load_settings  # noqa: E402

logger = logging.getLogger("chord.resources")


@dataclass(frozen=True)
class Counts:
    """Totals from /metrics: requests, those answered without a 5xx, errors, the latency histogram's sum and count."""

    requests: float = 0.0
    ok: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    latency_count: float = 0.0

    def since(self, earlier: Counts) -> Counts:
        """The counts since ``earlier``; all of them when the server restarted (its counters went back)."""
        if self.requests < earlier.requests or self.latency_count < earlier.latency_count:
            return self
        return Counts(*(now - then for now, then in zip(self._values(), earlier._values(), strict=True)))

    def _values(self) -> tuple[float, ...]:
        return (self.requests, self.ok, self.errors, self.latency_sum, self.latency_count)


def serving_pid(pid: int | None, listens: Callable) -> int | None:
    """The serving process, given a process that holds the listening socket: the keeper holds it too, so of
    ``pid`` and its children, the child that listens (``listens(connection)``) if there is one."""
    if pid is None:
        return None
    try:
        for child in psutil.Process(pid).children():
            if any(listens(conn) for conn in child.net_connections(kind="tcp")):
                return child.pid
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return pid


def parse_counts(text: str) -> Counts:
    """Counts from Prometheus text; a family that is missing counts 0."""
    requests = ok = errors = latency_sum = latency_count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "chord_requests_total":
                requests += sample.value
                ok += 0 if sample.labels.get("status", "").startswith("5") else sample.value
            elif sample.name == "chord_errors_total":
                errors += sample.value
            elif sample.name == "chord_request_seconds_sum":
                latency_sum += sample.value
            elif sample.name == "chord_request_seconds_count":
                latency_count += sample.value
    return Counts(requests, ok, errors, latency_sum, latency_count)


def gpu_memory() -> list[dict]:
    """Memory per GPU from nvidia-smi; [] without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    query = [smi, "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        try:
            index, used, total = (float(part) for part in line.split(","))
        except ValueError:
            continue
        gpus.append(
            {
                "index": int(index),
                "used_bytes": int(used * 2**20),
                "total_bytes": int(total * 2**20),
                "percent": round(100 * used / total, 1) if total else 0.0,
            }
        )
    return gpus


def model_folder(settings: Settings) -> Path | None:
    """The folder holding the model: the checkpoint, or the Hugging Face cache for a hub id; None if absent."""
    path = Path(settings.resolved_model_path())
    if not path.exists():
        path = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return path if path.exists() else None


class ResourceLog:
    """Samples the machine and the server at ``host:port``; ``line()`` gives one record and its alerts."""

    def __init__(self, settings: Settings, host: str, port: int, log_dir: Path, pid: int | None = None):
        self.settings = settings
        self.url = f"http://{host}:{port}/metrics"
        self.port = port
        self.log_dir = log_dir
        self.pid = pid
        self._processes: dict[int, psutil.Process] = {}  # kept, so cpu_percent measures since the last line
        self._last = Counts()
        psutil.cpu_percent(None)

    def _listens(self, conn) -> bool:
        return conn.status == psutil.CONN_LISTEN and bool(conn.laddr) and conn.laddr.port == self.port

    def server_process(self) -> psutil.Process | None:
        """The process given by --pid, else the serving process listening on the port (None when none is)."""
        pid = self.pid
        if pid is None:
            try:
                for conn in psutil.net_connections(kind="tcp"):
                    if self._listens(conn):
                        pid = serving_pid(conn.pid, self._listens)
                        break
            except psutil.AccessDenied:
                return None
        if pid is None:
            return None
        if pid not in self._processes:
            try:
                self._processes[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                return None
        return self._processes[pid]

    def _process_record(self, process: psutil.Process) -> dict | None:
        try:
            cached = self._processes.setdefault(process.pid, process)
            with cached.oneshot():
                return {
                    "pid": cached.pid,
                    "cpu_percent": round(cached.cpu_percent(None), 1),
                    "memory_percent": round(cached.memory_percent(), 2),
                    "rss_bytes": cached.memory_info().rss,
                }
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._processes.pop(process.pid, None)
            return None

    def processes(self) -> tuple[dict | None, dict | None]:
        """(server, model process): the model process is the server's child with the largest RSS."""
        server = self.server_process()
        if server is None:
            return None, None
        try:
            children = server.children(recursive=True)
            model = max(children, key=lambda child: child.memory_info().rss, default=None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            model = None
        return self._process_record(server), (self._process_record(model) if model is not None else None)

    def disks(self) -> list[dict]:
        folders = {"logs": self.log_dir, "model": model_folder(self.settings)}
        disks = []
        for name, folder in folders.items():
            if folder is None or not Path(folder).exists():
                continue
            usage = psutil.disk_usage(str(folder))
            disks.append({"folder": name, "path": str(folder), "percent": usage.percent, "free_bytes": usage.free})
        return disks

    def traffic(self) -> dict:
        """Requests, errors, success rate and average latency since the last line; {"metrics_error": ...} if down."""
        try:
            response = httpx.get(self.url, timeout=5)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            return {"metrics_error": f"{type(exc).__name__}: {exc}"[:200]}
        now = parse_counts(response.text)
        delta = now.since(self._last)
        self._last = now
        return {
            "requests": int(delta.requests),
            "errors": int(delta.errors),
            "success_rate_percent": round(100 * delta.ok / delta.requests, 2) if delta.requests else None,
            "latency_avg_s": round(delta.latency_sum / delta.latency_count, 4) if delta.latency_count else None,
        }

    def line(self) -> tuple[dict, list[dict]]:
        server, model = self.processes()
        record = {
            "ts": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_percent": psutil.cpu_percent(None),
            "memory_percent": psutil.virtual_memory().percent,
            "server": server,
            "model_process": model,
            "gpus": gpu_memory(),
            "disks": self.disks(),
            **self.traffic(),
        }
        return record, alerts(record, self.settings)


def alerts(record: dict, settings: Settings) -> list[dict]:
    """One alert per crossed threshold (the ALERT_* settings)."""
    checks = [("memory_percent", record["memory_percent"], settings.alert_memory_percent, ">")]
    checks += [(f"gpu{gpu['index']}_memory_percent", gpu["percent"], settings.alert_gpu_memory_percent, ">")
               for gpu in record["gpus"]]  # fmt: skip
    checks += [(f"disk_{disk['folder']}_percent", disk["percent"], settings.alert_disk_percent, ">")
               for disk in record["disks"]]  # fmt: skip
    checks += [
        ("success_rate_percent", record.get("success_rate_percent"), settings.alert_success_rate_percent, "<"),
        ("latency_avg_s", record.get("latency_avg_s"), settings.alert_latency_s, ">"),
        ("errors", record.get("errors"), settings.alert_errors, ">"),
    ]
    found = []
    for name, value, threshold, direction in checks:
        if value is None or not (value > threshold if direction == ">" else value < threshold):
            continue
        found.append(
            {
                "ts": record["ts"],
                "level": "ALERT",
                "alert": name,
                "value": value,
                "threshold": threshold,
                "message": f"ALERT {name} {value} {direction} {threshold}",
            }
        )
    return found


def write(out: TextIO, record: dict) -> None:
    out.write(json.dumps(record, separators=(",", ":")) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="-", help="file to append to; '-' = stdout (Supervisor's log file)")
    parser.add_argument("--once", action="store_true", help="write one line (after a 1 s CPU sample) and exit")
    parser.add_argument("--port", type=int, help="the server's port (default: PORT)")
    parser.add_argument("--pid", type=int, help="the server's pid (default: the process listening on the port)")
    parser.add_argument("--log-dir", default=str(INSTALL_ROOT / "logs"), help="the logs folder whose disk is watched")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per scrape of /metrics
    settings = load_settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else ("::1" if settings.host == "::" else settings.host)
    host = f"[{host}]" if ":" in host else host
    monitor = ResourceLog(settings, host, args.port or settings.port, Path(args.log_dir), args.pid)
    interval = 1.0 if args.once else settings.resource_log_interval_s
    logger.info("writing a line every %.0f s to %s, from %s", interval, args.output, monitor.url)
    out = sys.stdout if args.output == "-" else open(args.output, "a", encoding="utf-8")  # noqa: SIM115
    try:
        while True:
            time.sleep(interval)
            record, found = monitor.line()
            write(out, record)
            for alert in found:
                write(out, alert)
                logger.warning(alert["message"])
            if args.once:
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
