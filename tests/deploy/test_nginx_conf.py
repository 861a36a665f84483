"""deploy/nginx/seedstream.conf: balanced by least connections (before keepalive, as nginx requires), and
the config scripts/replicas.py renders from it (its upstreams and port) is one nginx accepts."""

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


def test_upstream_is_least_conn_before_keepalive():
    directives = upstream_directives(deploy.NGINX_CONF.read_text())
    assert directives.count("least_conn") == 1 and directives.count("keepalive") == 1, directives
    # nginx: "when using load balancer methods other than the default round-robin method, it is
    # necessary to activate them before the keepalive directive".
    assert directives.index("least_conn") < directives.index("keepalive")
    assert "server" in directives


def test_rendered_config_keeps_the_method_and_nginx_accepts_it(tmp_path):
    upstreams = ["127.0.0.1:50071", "127.0.0.1:50072"]
    conf = deploy.render_nginx_conf(upstreams, 50070, tmp_path, fail_timeout="7s")
    site = (tmp_path / "seedstream.conf").read_text()
    directives = upstream_directives(site)
    assert directives[: directives.index("keepalive")].count("least_conn") == 1
    assert re.findall(r"^\s*server (\S+) .*fail_timeout=7s;$", site, re.M) == upstreams
    binary = deploy.find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    check = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
