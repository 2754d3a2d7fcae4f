"""``runbroker keys | principals | groups | audit``: a server's identity directory, from a shell.

Each command takes ``--auth`` (default ``$RUNBROKER_AUTH``): where the directory is, as
:func:`directory_for` reads it. Every command is recorded in the audit log as done by
``local:<OS user>`` from the ``cli``. An error is one line on stderr and exit status 2.

Example:
    $ runbroker principals add alice --group proposal:p1 --auth runs.db
    $ runbroker keys create --principal alice --scopes read:metadata,read:data --expires 30d
    $ runbroker keys list
    $ runbroker keys revoke K7fQ2mXa9LpB
    $ runbroker groups add beamtime:b1 --proposal p1
    $ runbroker audit --since 1d
"""

from __future__ import annotations

import argparse
import functools
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .auth.audit import entries_json, format_entries, format_table, format_time, parse_since
from .auth.directory import Directory, directory_for
from .auth.keys import parse_duration
from .auth.principal import GROUP_KEYS, KINDS
from .errors import RunbrokerError
from .store.urls import redact

__all__ = ["ENV", "add_commands", "directory_for"]

#: The environment variable naming the directory when ``--auth`` is not given.
ENV = "RUNBROKER_AUTH"


def _who() -> str:
    """Who an admin command is done by, in the audit log."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"local:uid{os.getuid()}"


def _group(text: str) -> tuple[str, str]:
    """``"proposal:p1"`` as ``("proposal", "p1")``.

    Example:
        >>> _group("beamtime:b1")
        ('beamtime', 'b1')
        >>> _group("p1")
        Traceback (most recent call last):
        ...
        ValueError: group 'p1': write KIND:NAME (e.g. proposal:p1); the kinds are proposal, ...
    """
    kind, sep, name = text.partition(":")
    if not sep or not name or kind not in KINDS:
        raise ValueError(
            f"group {text!r}: write KIND:NAME (e.g. proposal:p1); the kinds are {', '.join(KINDS)}"
        )
    return kind, name


def _defaults(pairs: Sequence[str]) -> dict[str, str]:
    """``--default proposal_id=p1`` options as a mapping of access keys to values."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not value or key not in GROUP_KEYS.values():
            raise ValueError(
                f"--default {pair!r}: write KEY=VALUE with KEY one of "
                f"{', '.join(GROUP_KEYS.values())} (e.g. proposal_id=p1)"
            )
        out[key] = value
    return out


Command = Callable[[argparse.Namespace, Directory, str], int]


def _command(action: str) -> Callable[[Command], Callable[[argparse.Namespace], int]]:
    """Run a command on the directory ``--auth`` names, record it in the audit log, and
    turn an error into one line on stderr and exit status 2."""

    def wrap(func: Command) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            target = args.auth or os.environ.get(ENV)
            try:
                if not target:
                    raise ValueError(f"name the directory with --auth URL or ${ENV}")
                directory = directory_for(target)
                try:
                    who = _who()
                    code = func(args, directory, who)
                    directory.record(who, action, _target(args), _recorded(args), client="cli")
                    return code
                finally:
                    directory.close()
            except (RunbrokerError, ValueError, LookupError, OSError, SQLAlchemyError) as err:
                text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
                if isinstance(err, SQLAlchemyError):
                    text = f"database error: {getattr(err, 'orig', None) or err}".strip()
                where = action.removesuffix(".read").replace(".", " ")
                print(f"runbroker {where}: {redact(text, target)}", file=sys.stderr)
                return 2

        return run

    return wrap


def _target(args: argparse.Namespace) -> str:
    for name in ("name", "key_id", "group", "principal"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            return value
    return ""


def _recorded(args: argparse.Namespace) -> dict[str, Any]:
    """The options a command was given, for the audit log (there is never a secret in them)."""
    skip = {"auth", "func", "command", "keys", "principals", "groups", "json"}
    return {k: v for k, v in vars(args).items() if k not in skip and v not in (None, [], False, "")}


# -- keys ------------------------------------------------------------------------------------


@_command("keys.create")
def _keys_create(args: argparse.Namespace, d: Directory, who: str) -> int:
    info, secret = d.create_key(
        args.principal,
        args.scopes,
        expires=parse_duration(args.expires),
        defaults=_defaults(args.default),
        note=args.note,
    )
    expires = f"expires {format_time(info.expires)} UTC" if info.expires else "never expires"
    print(
        f"key {info.id} for {info.principal} ({', '.join(sorted(info.scopes))}), {expires}:",
        file=sys.stderr,
    )
    # The secret alone on stdout, so that KEY=$(runbroker keys create ...) takes just it.
    print(secret)
    print("Store this secret now: it will not be shown again.", file=sys.stderr)
    return 0


@_command("keys.list")
def _keys_list(args: argparse.Namespace, d: Directory, who: str) -> int:
    rows = [
        [
            k.id,
            k.principal,
            ",".join(sorted(k.scopes)),
            format_time(k.created),
            format_time(k.expires, "never"),
            format_time(k.revoked),
            format_time(k.last_used, "never"),
        ]
        for k in d.keys(args.principal)
    ]
    headers = ["id", "principal", "scopes", "created", "expires", "revoked", "last used"]
    print(format_table(headers, rows) if rows else "no API keys")
    return 0


@_command("keys.revoke")
def _keys_revoke(args: argparse.Namespace, d: Directory, who: str) -> int:
    info = d.revoke_key(args.key_id, by=who)
    print(f"revoked key {info.id} of {info.principal}")
    return 0


# -- principals ------------------------------------------------------------------------------


@_command("principals.add")
def _principals_add(args: argparse.Namespace, d: Directory, who: str) -> int:
    groups = [_group(g) for g in args.group]
    info = d.add_principal(
        args.name, kind="service" if args.service else "user", admin=args.admin, scopes=args.scopes
    )
    try:
        for kind, name in groups:
            d.add_member(info.name, kind, name)
    except Exception:
        d.remove_principal(info.name)  # all or nothing: no principal with half its groups
        raise
    print(f"added {info.kind} {info.name}{' (admin)' if info.admin else ''}")
    return 0


@_command("principals.list")
def _principals_list(args: argparse.Namespace, d: Directory, who: str) -> int:
    rows = [
        [
            p.name,
            p.kind,
            "yes" if p.admin else "no",
            ",".join(sorted(p.scopes)),
            " ".join(f"{k}:{n}" for k, n in sorted(d.groups_of(p.name))) or "-",
        ]
        for p in d.principals()
    ]
    headers = ["name", "kind", "admin", "scopes", "groups"]
    print(format_table(headers, rows) if rows else "no principals")
    return 0


@_command("principals.remove")
def _principals_remove(args: argparse.Namespace, d: Directory, who: str) -> int:
    d.remove_principal(args.name, by=who)
    print(f"removed {args.name} (its keys are revoked)")
    return 0


# -- groups ----------------------------------------------------------------------------------


@_command("groups.add")
def _groups_add(args: argparse.Namespace, d: Directory, who: str) -> int:
    kind, name = _group(args.group)
    d.add_group(kind, name, proposal=args.proposal)
    print(f"added {kind} {name}" + (f" of proposal {args.proposal}" if args.proposal else ""))
    return 0


@_command("groups.list")
def _groups_list(args: argparse.Namespace, d: Directory, who: str) -> int:
    rows = [
        [g.kind, g.name, g.proposal or "-", len(d.members(g.kind, g.name))]
        for g in d.groups(args.kind)
    ]
    print(format_table(["kind", "name", "proposal", "members"], rows) if rows else "no groups")
    return 0


@_command("groups.members")
def _groups_members(args: argparse.Namespace, d: Directory, who: str) -> int:
    kind, name = _group(args.group)
    for principal in args.add:
        d.add_member(principal, kind, name)
    for principal in args.remove:
        d.remove_member(principal, kind, name)
    for principal in d.members(kind, name):
        print(principal)
    return 0


# -- audit -----------------------------------------------------------------------------------


@_command("audit.read")
def _audit(args: argparse.Namespace, d: Directory, who: str) -> int:
    entries = d.audit_log(
        since=parse_since(args.since) if args.since else None,
        principal=args.principal,
        limit=args.limit,
    )
    if args.json:
        if entries:
            print(entries_json(entries))
    else:
        print(format_entries(entries) if entries else "nothing in the audit log matches")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``keys``, ``principals``, ``groups`` and ``audit`` to the ``runbroker`` command's
    subparsers ``sub``."""
    auth = argparse.ArgumentParser(add_help=False)
    auth.add_argument(
        "--auth",
        metavar="URL",
        help=f"the directory: a database URL, catalog file, folder or name (default: ${ENV})",
    )

    def leaf(parent: Any, name: str, func: Callable[..., int], text: str) -> Any:
        parser = parent.add_parser(name, parents=[auth], help=text)
        parser.set_defaults(func=func)
        return parser

    keys = sub.add_parser("keys", help="API keys: create, list, revoke").add_subparsers(
        dest="keys", required=True
    )
    kc = leaf(keys, "create", _keys_create, "make a key; its secret is printed once")
    kc.add_argument("--principal", required=True, help="whose key it is")
    kc.add_argument("--scopes", required=True, help="e.g. read:metadata,read:data")
    kc.add_argument("--expires", default="90d", help="30d, 12h, 90m, 2w or never (90d)")
    kc.add_argument(
        "--default",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an access tag a run it starts gets when it names none, e.g. proposal_id=p1",
    )
    kc.add_argument("--note", default="", help="what the key is for")
    leaf(keys, "list", _keys_list, "every key (never its secret)").add_argument(
        "--principal", help="only this principal's keys"
    )
    leaf(keys, "revoke", _keys_revoke, "revoke a key").add_argument("key_id", metavar="ID")

    principals = sub.add_parser("principals", help="users and services").add_subparsers(
        dest="principals", required=True
    )
    pa = leaf(principals, "add", _principals_add, "add a user (or --service)")
    pa.add_argument("name")
    pa.add_argument("--service", action="store_true", help="a service (a RunEngine), not a user")
    pa.add_argument("--admin", action="store_true", help="sees and writes every run")
    pa.add_argument("--scopes", help="what it may do (default: a user's; an admin's: all)")
    pa.add_argument(
        "--group", action="append", default=[], metavar="KIND:NAME", help="e.g. proposal:p1"
    )
    leaf(principals, "list", _principals_list, "every principal and its groups")
    leaf(principals, "remove", _principals_remove, "remove one; its keys are revoked").add_argument(
        "name"
    )

    groups = sub.add_parser("groups", help="proposals, beamtimes, beamlines").add_subparsers(
        dest="groups", required=True
    )
    ga = leaf(groups, "add", _groups_add, "add a group (a beamtime names its proposal)")
    ga.add_argument("group", metavar="KIND:NAME")
    ga.add_argument("--proposal", help="the proposal of a beamtime")
    leaf(groups, "list", _groups_list, "every group").add_argument(
        "--kind", choices=KINDS, help="only this kind"
    )
    gm = leaf(groups, "members", _groups_members, "a group's members (--add, --remove)")
    gm.add_argument("group", metavar="KIND:NAME")
    gm.add_argument("--add", action="append", default=[], metavar="PRINCIPAL")
    gm.add_argument("--remove", action="append", default=[], metavar="PRINCIPAL")

    au = sub.add_parser("audit", parents=[auth], help="who did what, newest first")
    au.add_argument("--since", help="1d, 12h, 2026-12-01 or an ISO time")
    au.add_argument("--principal", help="only what this principal did")
    au.add_argument("--limit", type=int, help="at most this many entries")
    au.add_argument("--json", action="store_true", help="one JSON object per line")
    au.set_defaults(func=_audit)
