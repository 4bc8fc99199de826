"""A real Prometheus (Debian's package, installed by scripts/ensure-prometheus.sh) for tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import requests


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_prometheus(targets: list[str], scrape_interval: str = "1s") -> Iterator[str]:
    """Start Prometheus scraping ``targets`` (URLs of /metrics endpoints); yields its base URL."""
    binary = shutil.which("prometheus")
    if not binary:
        raise RuntimeError("prometheus is not installed: run scripts/ensure-prometheus.sh (make test does)")
    folder = Path(tempfile.mkdtemp(prefix="releasetrain-prometheus-"))
    jobs = []
    for index, target in enumerate(targets):
        url = urlparse(target)
        jobs.append(
            f"""  - job_name: target{index}
    scrape_interval: {scrape_interval}
    metrics_path: {url.path or "/metrics"}
    static_configs:
      - targets: ['{url.netloc}']"""
        )
    config = folder / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: {scrape_interval}\nscrape_configs:\n" + "\n".join(jobs) + "\n")
    port = _free_port()
    log = open(folder / "prometheus.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {(folder / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
