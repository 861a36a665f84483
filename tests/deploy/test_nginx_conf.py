"""deploy/nginx/seedstream.conf: balanced round-robin (no method that would favour a replica refusing at once),
and the config scripts/replicas.py renders from it (its upstreams and port) is one nginx accepts."""

from __future__ import annotations

import re
import subprocess

import pytest
import replicas as deploy  # scripts/replicas.py, on pytest's `pythonpath` (pyproject.toml)


def upstream_directives(site: str) -> list[str]:
    """The directives of the `seedstream_replicas` upstream block, comments left out, in order."""
    body = re.search(r"upstream seedstream_replicas \{(.*?)\n\}", site, re.S)
    assert body, "no `upstream seedstream_replicas { ... }` block"
    lines = (line.split("#", 1)[0].strip() for line in body.group(1).splitlines())
    return [line.rstrip(";").split()[0] for line in lines if line]


METHODS = {"least_conn", "least_time", "hash", "ip_hash", "random"}


def test_upstream_is_round_robin_with_keepalive():
    """least_conn sent most requests to a restarting replica that refused them at once (see the comment)."""
    directives = upstream_directives(deploy.NGINX_CONF.read_text())
    assert not METHODS & set(directives), directives
    assert directives.count("keepalive") == 1 and "server" in directives


def test_rendered_config_keeps_the_method_and_nginx_accepts_it(tmp_path):
    upstreams = ["127.0.0.1:50071", "127.0.0.1:50072"]
    conf = deploy.render_nginx_conf(upstreams, 50070, tmp_path, fail_timeout="7s")
    site = (tmp_path / "seedstream.conf").read_text()
    directives = upstream_directives(site)
    assert not METHODS & set(directives) and "keepalive" in directives
    assert re.findall(r"^\s*server (\S+) .*fail_timeout=7s;$", site, re.M) == upstreams
    binary = deploy.find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    check = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
