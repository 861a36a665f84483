"""Run N seedstream replicas behind nginx on loopback ports: local trials, the nginx test, the soak bench.

    python scripts/replicas.py --replicas 3 --port 50050 -- --max-batch-size 4 --threads 1

starts `seedstream serve` N times (each with /metrics and JSON logs), then nginx (Debian's package)
with deploy/nginx/seedstream.conf, its upstream list rewritten to those replicas, and runs until
Ctrl-C. Clients use 127.0.0.1:PORT. Everything lives in a temporary folder (logs, nginx config).
Importable: `Replica`, `Nginx`, `start_replicas`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx" / "seedstream.conf"
# $msec: completion time; $upstream_addr: every replica tried, in order ("a, b" after a failover).
ACCESS_FORMAT = "$msec|$upstream_addr|$upstream_status|$status|$http_x_request_id|$request_time"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


class Replica:
    """One `python -m seedstream.server` process on a loopback port, with /metrics and JSON logs to a file."""

    def __init__(self, workdir: Path, index: int, serve_args: Sequence[str] = ()):
        self.index = index
        self.port = free_port()
        self.metrics_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = Path(workdir) / f"replica-{index}.log"
        self.serve_args = list(serve_args)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Launch (does not wait for the model; see wait_serving)."""
        cmd = [
            sys.executable,
            "-m",
            "seedstream.server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--log-format",
            "json",
            *self.serve_args,
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        log.close()

    def wait_serving(self, timeout: float = 300.0) -> None:
        from seedstream.client import Client

        with Client(self.target) as client:
            client.wait_until_serving(timeout=timeout)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, connections reset."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful drain); SIGKILL after `timeout` s."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def rss_bytes(self) -> int:
        """Resident memory of the process now (Linux /proc), 0 when it is not running."""
        try:
            with open(f"/proc/{self.proc.pid}/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, AttributeError):
            return 0


def render_nginx_conf(
    upstreams: Sequence[str], listen_port: int, workdir: Path, fail_timeout: str | None = None
) -> Path:
    """A whole nginx.conf for `nginx -p workdir`: the deploy/ site with these upstreams and port."""
    site = NGINX_CONF.read_text()
    match = re.search(r"upstream seedstream_replicas \{(.*?)\n\}", site, re.S)
    template = re.search(r"^\s*server 127\.0\.0\.1:\d+ (.*);$", match.group(1), re.M).group(1)
    if fail_timeout is not None:
        template = re.sub(r"fail_timeout=\S+", f"fail_timeout={fail_timeout}", template)
    body = re.sub(r"^\s*server 127\.0\.0\.1:\d+ .*;\n", "", match.group(1), flags=re.M)
    servers = "".join(f"\n    server {u} {template};" for u in upstreams)
    site = site.replace(match.group(0), "upstream seedstream_replicas {" + servers + body + "\n}")
    site, count = re.subn(r"listen 127\.0\.0\.1:\d+ http2;", f"listen 127.0.0.1:{listen_port} http2;", site)
    assert count == 1, "deploy/nginx/seedstream.conf: expected one 'listen 127.0.0.1:PORT http2;'"
    (workdir / "seedstream.conf").write_text(site)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers write temp files in workdir
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    log_format seedstream '{ACCESS_FORMAT}';\n"
        f"    access_log {workdir}/access.log seedstream;\n"
        + "".join(
            f"    {k}_temp_path {workdir}/{k}_temp;\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"    include {workdir}/seedstream.conf;\n"
        "}\n"
    )
    return conf


class Nginx:
    """nginx in the foreground (daemon off) with a rendered config; stop() ends it."""

    def __init__(
        self, workdir: Path, upstreams: Sequence[str], port: int | None = None, fail_timeout: str | None = None
    ):
        self.binary = find_nginx()
        if self.binary is None:
            raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.conf = render_nginx_conf(upstreams, self.port, self.workdir, fail_timeout)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        check = subprocess.run(
            [self.binary, "-t", "-p", str(self.workdir), "-c", str(self.conf)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected the config: {check.stderr}")
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.workdir), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {(self.workdir / 'error.log').read_text()}")
                time.sleep(0.1)
        raise TimeoutError("nginx did not start listening")

    def access_log(self) -> list[dict]:
        """One dict per finished request: time, upstreams (list), upstream_status, status, request_id."""
        path = self.workdir / "access.log"
        entries = []
        for line in path.read_text().splitlines() if path.exists() else ():
            msec, ups, ups_status, status, rid, rtime = line.split("|")
            entries.append(
                {
                    "time": float(msec),
                    "upstreams": [u.strip() for u in ups.split(",") if u.strip() not in ("", "-")],
                    "upstream_status": ups_status,
                    "status": status,
                    "request_id": rid,
                    "request_time": float(rtime),
                }
            )
        return entries

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


def start_replicas(workdir: Path, count: int, serve_args: Sequence[str] = (), timeout: float = 300.0) -> list[Replica]:
    """Launch `count` replicas at once (models load in parallel) and wait until all are SERVING."""
    replicas = [Replica(workdir, i, serve_args) for i in range(count)]
    for r in replicas:
        r.start()
    try:
        for r in replicas:
            r.wait_serving(timeout)
    except BaseException:
        for r in replicas:
            r.kill()
        raise
    return replicas


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--port", type=int, default=50050, help="nginx's port (clients connect here)")
    parser.add_argument("serve_args", nargs="*", help="after --: extra `seedstream serve` flags for every replica")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="seedstream-replicas-"))
    replicas: list[Replica] = []
    nginx: Nginx | None = None
    try:
        replicas = start_replicas(workdir, args.replicas, args.serve_args)
        nginx = Nginx(workdir, [r.target for r in replicas], args.port)
        nginx.start()
        for r in replicas:
            print(f"replica {r.index}: {r.target} (metrics {r.metrics_url}, log {r.log_path}, pid {r.proc.pid})")
        print(f"nginx: {nginx.target} (config and access log in {workdir}); Ctrl-C stops everything", flush=True)
        # Blocked only now: children inherit the signal mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            r.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
