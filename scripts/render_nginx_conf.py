"""Render config/nginx/chord.conf for other replica ports and listen address, optionally standalone.

    python scripts/render_nginx_conf.py --replicas 4 --first-port 7860 --listen 0.0.0.0:80 > chord.conf
    python scripts/render_nginx_conf.py --replica 10.0.0.5:7860 --replica 10.0.0.6:7860 > chord.conf
    python scripts/render_nginx_conf.py --standalone /tmp/ngx --listen 127.0.0.1:8080 -o /tmp/ngx/nginx.conf
    nginx -p /tmp/ngx -c /tmp/ngx/nginx.conf -g 'daemon off;'

``--standalone DIR`` wraps the site in a whole nginx.conf whose pid file, logs and temp folders
are inside DIR, so nginx runs as an ordinary user (the tests run it so).
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parent.parent / "config" / "nginx" / "chord.conf"
_UPSTREAM_SERVER = re.compile(r"^(\s*)server\s+\S+:\d+(\s[^;]*)?;\s*$", re.MULTILINE)
_LISTEN = re.compile(r"^(\s*)listen\s+[^;]+;", re.MULTILINE)

STANDALONE = """# Standalone nginx.conf for Chord, rendered by scripts/render_nginx_conf.py; everything under {prefix}.
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    default_type application/octet-stream;
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/temp/client_body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;

{site}
}}
"""


def render_site(replicas: list[str], listen: str, template: str | None = None) -> str:
    """The site config with ``replicas`` (``host:port``) in every upstream and nginx listening on ``listen``."""
    if not replicas:
        raise ValueError("at least one replica (host:port) is required")
    for replica in replicas:
        if not re.fullmatch(r"[\w.\-\[\]:]+:\d+", replica):
            raise ValueError(f"a replica must look like host:port, got {replica!r}")
    text = template if template is not None else SITE.read_text(encoding="utf-8")

    def upstream(block: re.Match) -> str:
        lines = block.group(0)
        servers = list(_UPSTREAM_SERVER.finditer(lines))
        if not servers:
            return lines
        indent, options = servers[0].group(1), servers[0].group(2) or ""
        rendered = "".join(f"{indent}server {replica}{options};\n" for replica in replicas)
        return lines[: servers[0].start()] + rendered + lines[servers[-1].end() + 1 :]

    text = re.sub(r"^upstream\s+\w+\s*\{.*?^\}", upstream, text, flags=re.MULTILINE | re.DOTALL)
    return _LISTEN.sub(lambda m: f"{m.group(1)}listen {listen};", text)


def render_standalone(site: str, prefix: Path) -> str:
    """A whole nginx.conf around ``site`` with the pid, logs and temp folders in ``prefix`` (created)."""
    for folder in ("logs", "temp"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    site = site.replace("/var/log/nginx/", f"{prefix}/logs/")
    indented = "\n".join(f"    {line}" if line else "" for line in site.splitlines())
    # Started as root, nginx would run its workers as nobody, who cannot write the temp folders here.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    return STANDALONE.format(prefix=prefix, site=indented, user=user)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replica", action="append", default=[], help="host:port of one replica (repeatable)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas on consecutive ports (without --replica)")
    parser.add_argument("--first-port", type=int, default=7860, help="port of the first replica")
    parser.add_argument("--host", default="127.0.0.1", help="host of the replicas (without --replica)")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="address nginx listens on")
    parser.add_argument("--standalone", type=Path, default=None, help="write a whole nginx.conf living in this dir")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write here instead of stdout")
    args = parser.parse_args(argv)
    replicas = args.replica or [f"{args.host}:{args.first_port + i}" for i in range(args.replicas)]
    try:
        text = render_site(replicas, args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    if args.standalone is not None:
        text = render_standalone(text, args.standalone.resolve())
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
