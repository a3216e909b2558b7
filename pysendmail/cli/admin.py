"""``pysendmail``: the administrator's command (configuration, queue, sidecar).

    pysendmail config check [-C FILE]
    pysendmail queue init | list [--json] | show ID | run [--watch]
    pysendmail queue flush [ID...] | delete ID... | hold ID... | release ID... | requeue ID...
    pysendmail serve [-C FILE]
    pysendmail hash-password [NAME] [--scheme scrypt|pbkdf2_sha256]
    pysendmail version

Not on the sendmail hot path: argparse is fine here. Errors go through the
same single mapping as sendmail's (``pysendmail.cli.guarded``).
"""

from __future__ import annotations

import argparse
import sys

from pysendmail import __version__, errors
from pysendmail.cli import Streams, guarded


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise errors.UsageError(message)


def _parser() -> _Parser:
    p = _Parser(prog="pysendmail", description="pysendmail administration")
    p.add_argument("-C", "--config", help="configuration file (default: /etc/pysendmail.toml)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    cfg = sub.add_parser("config", help="configuration")
    cfg_sub = cfg.add_subparsers(dest="action", required=True, parser_class=_Parser)
    cfg_sub.add_parser("check", help="validate and print the effective configuration")

    q = sub.add_parser("queue", help="the mail queue")
    q_sub = q.add_subparsers(dest="action", required=True, parser_class=_Parser)
    q_sub.add_parser("init", help="create the queue directories")
    lst = q_sub.add_parser("list", help="list the queue (like mailq)")
    lst.add_argument("--json", action="store_true", help="one JSON document")
    show = q_sub.add_parser("show", help="show one message")
    show.add_argument("id")
    run = q_sub.add_parser("run", help="deliver what is due")
    run.add_argument("--watch", action="store_true", help="keep running, woken by new mail")
    run.add_argument("-v", "--verbose", action="count", default=0)
    fl = q_sub.add_parser("flush", help="deliver now (all, or the given ids)")
    fl.add_argument("ids", nargs="*")
    for name, text in (
        ("delete", "delete messages"),
        ("hold", "hold messages"),
        ("release", "release held messages"),
        ("requeue", "move failed messages back into the queue"),
    ):
        sp = q_sub.add_parser(name, help=text)
        sp.add_argument("ids", nargs="+")

    srv = sub.add_parser("serve", help="the SMTP sidecar: listen, queue, deliver (until SIGTERM)")
    # SUPPRESS: without -C here, the value given before "serve" stays.
    srv.add_argument("-C", "--config", default=argparse.SUPPRESS, help="configuration file")

    hp = sub.add_parser(
        "hash-password", help="make a server.users entry (reads the password from stdin)"
    )
    hp.add_argument("name", nargs="?", help="the user name to put before the hash")
    hp.add_argument("--scheme", choices=("scrypt", "pbkdf2_sha256"), default="scrypt")

    sub.add_parser("version", help="print the version")
    return p


def main(argv: list[str], io: Streams | None = None) -> int:
    streams = io if io is not None else Streams()
    return guarded("pysendmail", streams, lambda: _run(argv, streams))


def _run(argv: list[str], io: Streams) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        io.stdout.write(f"pysendmail {__version__}\n")
        return 0
    if args.command == "config":
        from pysendmail.config.check import check_main

        return check_main(args.config, io.environ, io.stdout, io.stderr)
    if args.command == "serve":
        from pysendmail.server.main import serve_main

        return serve_main(args.config, io)
    if args.command == "hash-password":
        return _hash_password(io, args.name, args.scheme)
    from pysendmail.config import load_settings

    settings = load_settings(args.config, io.environ)
    from pysendmail.cli import queuecmd

    action = args.action
    if action == "init":
        from pysendmail.queue import Queue

        for change in Queue(settings.general.queue_dir).ensure():
            io.stdout.write(change + "\n")
        io.stdout.write(f"{settings.general.queue_dir}: queue ready\n")
        return 0
    if action == "list":
        return queuecmd.list_queue(settings, io, as_json=args.json)
    if action == "show":
        return queuecmd.show(settings, io, args.id)
    if action == "run":
        from pysendmail.runner import run_queue_main

        return run_queue_main(settings, io, watch=args.watch, verbose=args.verbose)
    if action == "flush":
        from pysendmail.runner import run_queue_main

        if args.ids:
            status = queuecmd.admin(settings, io, "flush", args.ids)
            if status:
                return status
        return run_queue_main(settings, io, ids=args.ids or None)
    return queuecmd.admin(settings, io, action, args.ids)


def _hash_password(io: Streams, name: str | None, scheme: str) -> int:
    """Print ``NAME:HASH`` (or the hash) for the password typed twice, or read from stdin."""
    from pysendmail.server.passwords import MAX_PASSWORD, hash_password

    if name is not None and (not name or ":" in name or not name.isprintable() or " " in name):
        raise errors.UsageError("the user name must not be empty or hold a colon or a space")
    stdin = io.stdin
    if stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise errors.UsageError("the passwords differ; nothing was printed")
    else:
        raw = stdin.readline(MAX_PASSWORD + 2)
        password = raw.decode("utf-8").rstrip("\r\n")
    if not password or len(password.encode()) > MAX_PASSWORD:
        raise errors.UsageError(f"the password must be 1 to {MAX_PASSWORD} octets")
    hashed = hash_password(password, scheme=scheme)
    io.stdout.write(f"{name}:{hashed}\n" if name else hashed + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
