"""Render Chord's programs for a system Supervisor (/etc/supervisor/conf.d/chord.conf).

Absolute paths, the Chord settings of the current environment baked into ``environment=``, and
the watchdog pointed at the system ``supervisorctl``. Usage:
    MODEL_PATH=/srv/models/Qwen2.5-VL-7B-Instruct python scripts/render_supervisor_conf.py --root /srv/chord
"""

from __future__ import annotations

import argparse
import configparser
import io
import os
import pwd
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.settings import Settings  # noqa: E402

LOCAL_CONF = "supervisor/supervisord.conf"
PROGRAMS = ("program:chord", "program:chord-watchdog", "program:chord-resources")


def render(root: Path, environ: dict[str, str], user: str | None) -> str:
    """The system conf text for a checkout at ``root``."""
    local = configparser.RawConfigParser()
    local.read(root / LOCAL_CONF)
    out = configparser.RawConfigParser()
    names = [n.upper() for n in Settings.model_fields] + ["CHORD_CONFIG"]
    chord_env = {k: v for k, v in environ.items() if k in names or k.startswith("WATCHDOG_")}
    for section in PROGRAMS:
        out.add_section(section)
        for key, value in local.items(section):
            out.set(section, key, value.replace("%(here)s/..", str(root)).replace("%(here)s", str(root / "supervisor")))
        env = dict(_parse_env(out.get(section, "environment", fallback="")))
        env.update(chord_env)
        if section == "program:chord-watchdog":
            env["SUPERVISORCTL"] = "supervisorctl"
        out.set(section, "environment", ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(env.items())))
        if user and section in ("program:chord", "program:chord-resources"):
            out.set(section, "user", user)  # the watchdog stays with supervisord's user: it needs the socket
    buffer = io.StringIO()
    buffer.write("; Chord for the system Supervisor, rendered by scripts/render_supervisor_conf.py\n")
    out.write(buffer)
    return buffer.getvalue()


def _parse_env(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        pairs.append((key.strip(), value.strip().strip('"')))
    return pairs


def _escape(value: str) -> str:
    return value.replace("%", "%%").replace('"', '\\"')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--user", default=None, help="user the programs run as (default: owner of --root)")
    args = parser.parse_args()
    root = args.root.resolve()
    user = args.user or pwd.getpwuid(root.stat().st_uid).pw_name
    sys.stdout.write(render(root, dict(os.environ), user))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
