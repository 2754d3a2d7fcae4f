"""The identity directory: principals, their groups, their API keys and the audit log, in SQL.

A :class:`Directory` lives in any SQLAlchemy database (SQLite or PostgreSQL), in tables named
``auth_*`` that sit beside a catalog's own tables without clashing: a SQL catalog's database
can hold its own directory. The tables are made when missing.

Example:
    >>> d = Directory("sqlite://")
    >>> d.add_principal("alice")
    PrincipalInfo(name='alice', kind='user', admin=False, scopes=..., created=...)
    >>> d.add_group("proposal", "p1"); d.add_group("beamtime", "b1", proposal="p1")
    >>> d.add_member("alice", "proposal", "p1")
    >>> sorted(d.groups_of("alice"))
    [('beamtime', 'b1'), ('proposal', 'p1')]
    >>> info, secret = d.create_key("alice", "read:metadata")
    >>> d.verify_key(secret).principal
    'alice'
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.pool import StaticPool

from ..errors import NotAuthenticatedError, NotFoundError, RequestError
from ..store.urls import driver_url, redact
from . import keys as keyfmt
from .keys import KeyInfo
from .principal import ADMIN_SCOPES, KINDS, USER_SCOPES, Principal, parse_scopes

__all__ = ["AuditEntry", "Directory", "GroupInfo", "KeyInfo", "PrincipalInfo", "directory_for"]

#: A key's ``last_used`` is written at most this often (seconds): not once per request.
LAST_USED_EVERY = 60.0

metadata = MetaData()
principals_t = Table(
    "auth_principals",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("admin", Boolean, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("created", Float, nullable=False),
)
groups_t = Table(
    "auth_groups",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("name", String(128), primary_key=True),
    # The proposal of a beamtime; NULL for every other kind.
    Column("parent", String(128), nullable=True),
    Index("ix_auth_groups_parent", "parent"),
)
members_t = Table(
    "auth_members",
    metadata,
    Column("principal", String(128), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("name", String(128), primary_key=True),
    # The primary key serves "groups of a principal"; this index "members of a group".
    Index("ix_auth_members_group", "kind", "name", "principal"),
)
keys_t = Table(
    "auth_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("principal", String(128), nullable=False, index=True),
    Column("salt", LargeBinary, nullable=False),
    Column("digest", LargeBinary, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("defaults", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=True),
    Column("revoked", Float, nullable=True),
    Column("revoked_by", String(160), nullable=True),
    Column("last_used", Float, nullable=True),
)
audit_t = Table(
    "auth_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("principal", String(160), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("client", String(256), nullable=False),
    Index("ix_auth_audit_time", "time"),
    Index("ix_auth_audit_principal", "principal", "time"),
)


@dataclasses.dataclass(frozen=True)
class PrincipalInfo:
    """A principal as the directory holds it (its groups: :meth:`Directory.groups_of`)."""

    name: str
    kind: str
    admin: bool
    scopes: frozenset[str]
    created: datetime


@dataclasses.dataclass(frozen=True)
class GroupInfo:
    """A group: ``proposal`` is the proposal of a beamtime, ``None`` for other kinds."""

    kind: str
    name: str
    proposal: str | None = None


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log: who did what to what, when, and from where."""

    id: int
    time: datetime
    principal: str
    action: str
    target: str
    detail: Mapping[str, Any]
    client: str


def check_name(name: Any, what: str = "principal name") -> str:
    """``name`` if it can name a principal or a group: non-empty, printable, at most 128
    characters; else a :class:`RequestError` saying what is wrong.

    Example:
        >>> check_name("alice")
        'alice'
        >>> check_name("bad\\nname")
        Traceback (most recent call last):
        ...
        runbroker.errors.RequestError: principal name 'bad\\nname': must be printable ...
    """
    if not isinstance(name, str) or not name.strip():
        raise RequestError(f"{what} {name!r}: must be a non-empty text")
    if not name.isprintable():
        raise RequestError(f"{what} {name!r}: must be printable (no control characters)")
    if len(name) > 128:
        raise RequestError(f"{what} {name[:20]!r}...: longer than 128 characters")
    return name


def check_kind(kind: str) -> str:
    """``kind`` if it is a group kind (:data:`~runbroker.auth.principal.KINDS`)."""
    if kind not in KINDS:
        raise RequestError(f"unknown group kind {kind!r}; the kinds are: {', '.join(KINDS)}")
    return kind


def _when(stamp: float | None) -> datetime | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC)


def _stamp(when: datetime | float | None) -> float | None:
    if when is None or isinstance(when, (int, float)):
        return when
    return when.timestamp()


def _found(row: Row | None, missing: str) -> Row:
    """``row``, or :class:`NotFoundError` saying what is ``missing``."""
    if row is None:
        raise NotFoundError(missing)
    return row


def _scopes_text(scopes: Iterable[str]) -> str:
    return ",".join(sorted(scopes))


class Directory:
    """Principals, groups, API keys and the audit log in the database at ``url``.

    ``url`` is a SQLAlchemy URL (``sqlite:///auth.db``, ``postgresql://host/db``; ``sqlite://``
    is a directory in memory). The tables are created if missing.

    Example:
        >>> d = Directory("sqlite://")
        >>> d.principal("nobody") is None
        True
    """

    def __init__(self, url: str) -> None:
        self.url = driver_url(url)
        options: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            # A catalog's writer may hold the file a moment; wait for it rather than fail.
            options["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if self.url in ("sqlite://", "sqlite:///:memory:"):
                options["poolclass"] = StaticPool  # one connection: the one database
        self._engine: Engine = create_engine(self.url, **options)
        metadata.create_all(self._engine, checkfirst=True)

    def __repr__(self) -> str:
        return f"Directory({redact(self.url)!r})"

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    # -- principals --------------------------------------------------------------------------

    def add_principal(
        self,
        name: str,
        kind: str = "user",
        admin: bool = False,
        scopes: str | Iterable[str] | None = None,
    ) -> PrincipalInfo:
        """Add a user or a service; ``scopes`` default to a user's (an admin's: all).

        Example:
            >>> d = Directory("sqlite://")
            >>> d.add_principal("beamline-re", kind="service", scopes="write:runs").scopes
            frozenset({'write:runs'})
        """
        check_name(name)
        if kind not in ("user", "service"):
            raise RequestError(f"principal {name!r}: kind {kind!r} is neither user nor service")
        if scopes is None:
            held = ADMIN_SCOPES if admin else USER_SCOPES
        else:
            held = parse_scopes(scopes if isinstance(scopes, str) else list(scopes))
        with self._engine.begin() as conn:
            if self._principal_row(conn, name) is not None:
                raise RequestError(f"principal {name!r} exists already")
            conn.execute(
                insert(principals_t).values(
                    name=name,
                    kind=kind,
                    admin=bool(admin),
                    scopes=_scopes_text(held),
                    created=time.time(),
                )
            )
            return self._principal_info(self._principal_row(conn, name))

    def principal(self, name: str) -> PrincipalInfo | None:
        """The principal ``name``, or ``None``."""
        with self._engine.connect() as conn:
            row = self._principal_row(conn, name)
        return None if row is None else self._principal_info(row)

    def principals(self) -> list[PrincipalInfo]:
        """Every principal, by name."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(principals_t).order_by(principals_t.c.name)).all()
        return [self._principal_info(r) for r in rows]

    def remove_principal(self, name: str, by: str = "") -> None:
        """Remove a principal: its memberships go, its keys are revoked (kept for the record).

        Example:
            >>> d = Directory("sqlite://"); _ = d.add_principal("bob")
            >>> d.remove_principal("bob"); d.principal("bob") is None
            True
        """
        with self._engine.begin() as conn:
            self._require_principal(conn, name)
            conn.execute(delete(members_t).where(members_t.c.principal == name))
            conn.execute(
                update(keys_t)
                .where(keys_t.c.principal == name, keys_t.c.revoked.is_(None))
                .values(revoked=time.time(), revoked_by=by or "principal removed")
            )
            conn.execute(delete(principals_t).where(principals_t.c.name == name))

    def caller(self, name: str, *, via: str = "local", key: KeyInfo | None = None) -> Principal:
        """The :class:`~runbroker.auth.principal.Principal` ``name`` acts as: its expanded
        groups, and its scopes (narrowed to ``key``'s when it comes with an API key).

        Example:
            >>> d = Directory("sqlite://"); _ = d.add_principal("alice", admin=True)
            >>> d.caller("alice").admin
            True
        """
        info = self.principal(name)
        if info is None:
            raise NotAuthenticatedError(f"principal {name!r} is not known to this server")
        scopes = info.scopes if key is None else info.scopes & key.scopes
        return Principal(
            name=info.name,
            kind=info.kind,
            groups=self.groups_of(name),
            scopes=frozenset(scopes),
            admin=info.admin,
            defaults=dict(key.defaults) if key is not None else {},
            via=via,
        )

    def authenticate(self, secret: str) -> Principal:
        """The principal an API key's secret proves (see :meth:`verify_key`).

        Example:
            >>> d = Directory("sqlite://"); _ = d.add_principal("alice")
            >>> _, secret = d.create_key("alice", "read:metadata")
            >>> d.authenticate(secret).scopes, d.authenticate(secret).via
            (frozenset({'read:metadata'}), 'api-key')
        """
        key = self.verify_key(secret)
        return self.caller(key.principal, via="api-key", key=key)

    def _principal_row(self, conn: Connection, name: str) -> Row | None:
        return conn.execute(select(principals_t).where(principals_t.c.name == name)).first()

    def _require_principal(self, conn: Connection, name: str) -> Row:
        return _found(self._principal_row(conn, name), f"no principal named {name!r}")

    @staticmethod
    def _principal_info(row: Row) -> PrincipalInfo:
        return PrincipalInfo(
            name=row.name,
            kind=row.kind,
            admin=bool(row.admin),
            scopes=parse_scopes(row.scopes),
            created=_when(row.created),
        )

    # -- groups ------------------------------------------------------------------------------

    def add_group(self, kind: str, name: str, proposal: str | None = None) -> None:
        """Add a group; a beamtime names its one proposal (added if missing), others none.

        Example:
            >>> d = Directory("sqlite://")
            >>> d.add_group("beamtime", "b1")
            Traceback (most recent call last):
            ...
            runbroker.errors.RequestError: beamtime 'b1': name its proposal (a beamtime ...
        """
        check_kind(kind)
        check_name(name, f"{kind} name")
        if kind == "beamtime" and not proposal:
            raise RequestError(
                f"beamtime {name!r}: name its proposal (a beamtime belongs to exactly one)"
            )
        if kind != "beamtime" and proposal:
            raise RequestError(f"{kind} {name!r}: only a beamtime belongs to a proposal")
        with self._engine.begin() as conn:
            if proposal:
                check_name(proposal, "proposal name")
                self._ensure_group(conn, "proposal", proposal)
            found = self._group_row(conn, kind, name)
            if found is not None:
                if found.parent != proposal:
                    raise RequestError(
                        f"beamtime {name!r} belongs to proposal {found.parent!r} already"
                    )
                return
            conn.execute(insert(groups_t).values(kind=kind, name=name, parent=proposal))

    def groups(self, kind: str | None = None) -> list[GroupInfo]:
        """Every group (of one kind), by kind and name."""
        query = select(groups_t).order_by(groups_t.c.kind, groups_t.c.name)
        if kind is not None:
            query = query.where(groups_t.c.kind == check_kind(kind))
        with self._engine.connect() as conn:
            return [GroupInfo(r.kind, r.name, r.parent) for r in conn.execute(query)]

    def remove_group(self, kind: str, name: str) -> None:
        """Remove a group and its memberships (a proposal's beamtimes too)."""
        with self._engine.begin() as conn:
            self._require_group(conn, kind, name)
            doomed = [(kind, name)]
            if kind == "proposal":
                doomed += [
                    ("beamtime", b)
                    for b in conn.execute(
                        select(groups_t.c.name).where(
                            groups_t.c.kind == "beamtime", groups_t.c.parent == name
                        )
                    ).scalars()
                ]
            for k, n in doomed:
                conn.execute(delete(members_t).where(members_t.c.kind == k, members_t.c.name == n))
                conn.execute(delete(groups_t).where(groups_t.c.kind == k, groups_t.c.name == n))

    def add_member(self, principal: str, kind: str, name: str) -> None:
        """Make ``principal`` a member of a group. A missing group is added, except a
        beamtime, which must be added first with its proposal.

        Example:
            >>> d = Directory("sqlite://"); _ = d.add_principal("staff1")
            >>> d.add_member("staff1", "beamline", "bl1"); d.groups_of("staff1")
            frozenset({('beamline', 'bl1')})
        """
        check_kind(kind)
        with self._engine.begin() as conn:
            self._require_principal(conn, principal)
            if kind == "beamtime":
                self._require_group(conn, kind, name)
            else:
                check_name(name, f"{kind} name")
                self._ensure_group(conn, kind, name)
            held = conn.execute(
                select(members_t.c.principal).where(
                    members_t.c.principal == principal,
                    members_t.c.kind == kind,
                    members_t.c.name == name,
                )
            ).first()
            if held is None:
                conn.execute(insert(members_t).values(principal=principal, kind=kind, name=name))

    def remove_member(self, principal: str, kind: str, name: str) -> None:
        """End ``principal``'s membership of a group."""
        with self._engine.begin() as conn:
            gone = conn.execute(
                delete(members_t).where(
                    members_t.c.principal == principal,
                    members_t.c.kind == check_kind(kind),
                    members_t.c.name == name,
                )
            )
            if gone.rowcount == 0:
                raise NotFoundError(f"{principal!r} is not a member of {kind} {name!r}")

    def members(self, kind: str, name: str) -> list[str]:
        """The direct members of a group, by name."""
        with self._engine.connect() as conn:
            self._require_group(conn, check_kind(kind), name)
            found = conn.execute(
                select(members_t.c.principal)
                .where(members_t.c.kind == kind, members_t.c.name == name)
                .order_by(members_t.c.principal)
            )
            return list(found.scalars())

    def groups_of(self, principal: str) -> frozenset[tuple[str, str]]:
        """A principal's groups, expanded: a proposal's member holds its beamtimes too.

        Example:
            >>> d = Directory("sqlite://"); _ = d.add_principal("bob")
            >>> d.groups_of("bob")
            frozenset()
        """
        with self._engine.connect() as conn:
            direct = {
                (r.kind, r.name)
                for r in conn.execute(
                    select(members_t.c.kind, members_t.c.name).where(
                        members_t.c.principal == principal
                    )
                )
            }
            proposals = [n for k, n in direct if k == "proposal"]
            if proposals:
                beamtimes = conn.execute(
                    select(groups_t.c.name).where(
                        groups_t.c.kind == "beamtime", groups_t.c.parent.in_(proposals)
                    )
                ).scalars()
                direct |= {("beamtime", b) for b in beamtimes}
        return frozenset(direct)

    def _group_row(self, conn: Connection, kind: str, name: str) -> Row | None:
        return conn.execute(
            select(groups_t).where(groups_t.c.kind == kind, groups_t.c.name == name)
        ).first()

    def _require_group(self, conn: Connection, kind: str, name: str) -> Row:
        hint = " (add it with its proposal first)" if kind == "beamtime" else ""
        return _found(self._group_row(conn, kind, name), f"no {kind} named {name!r}{hint}")

    def _ensure_group(self, conn: Connection, kind: str, name: str) -> None:
        if self._group_row(conn, kind, name) is None:
            conn.execute(insert(groups_t).values(kind=kind, name=name, parent=None))

    # -- API keys ----------------------------------------------------------------------------

    def create_key(
        self,
        principal: str,
        scopes: str | Iterable[str],
        expires: timedelta | None = None,
        defaults: Mapping[str, str] | None = None,
        note: str = "",
    ) -> tuple[KeyInfo, str]:
        """A new API key for ``principal``: its record, and its secret (shown this once,
        never stored). Its scopes must be ones the principal holds.

        Example:
            >>> d = Directory("sqlite://"); _ = d.add_principal("alice")
            >>> info, secret = d.create_key("alice", "read:data", expires=timedelta(days=30))
            >>> secret.startswith("rbk_"), info.scopes
            (True, frozenset({'read:data'}))
        """
        wanted = parse_scopes(scopes if isinstance(scopes, str) else list(scopes))
        if not wanted:
            raise RequestError("a key needs at least one scope (e.g. read:metadata)")
        if expires is not None and expires <= timedelta(0):
            raise RequestError(f"a key's lifetime must be positive, not {expires}")
        key_defaults = {str(k): str(v) for k, v in (defaults or {}).items()}
        key_id, secret = keyfmt.new_secret()
        salt = keyfmt.new_salt()
        now = time.time()
        with self._engine.begin() as conn:
            held = self._principal_info(self._require_principal(conn, principal)).scopes
            if wanted - held:
                raise RequestError(
                    f"principal {principal!r} does not hold {', '.join(sorted(wanted - held))}; "
                    "a key cannot give more than its principal has"
                )
            conn.execute(
                insert(keys_t).values(
                    id=key_id,
                    principal=principal,
                    salt=salt,
                    digest=keyfmt.digest(salt, secret),
                    scopes=_scopes_text(wanted),
                    defaults=json.dumps(key_defaults, sort_keys=True),
                    note=note,
                    created=now,
                    expires=None if expires is None else now + expires.total_seconds(),
                )
            )
            row = conn.execute(select(keys_t).where(keys_t.c.id == key_id)).one()
        return self._key_info(row), secret

    def keys(self, principal: str | None = None) -> list[KeyInfo]:
        """API keys (one principal's), oldest first; never their secrets nor digests."""
        query = select(keys_t).order_by(keys_t.c.created, keys_t.c.id)
        if principal is not None:
            query = query.where(keys_t.c.principal == principal)
        with self._engine.connect() as conn:
            return [self._key_info(r) for r in conn.execute(query)]

    def key(self, key_id: str) -> KeyInfo:
        """The key ``key_id`` (:class:`NotFoundError` if there is none)."""
        with self._engine.connect() as conn:
            return self._key_info(self._require_key(conn, key_id))

    def revoke_key(self, key_id: str, by: str) -> KeyInfo:
        """Revoke a key (``by``: who did it); a revoked key stays revoked.

        Example:
            >>> d = Directory("sqlite://"); _ = d.add_principal("alice")
            >>> info, _ = d.create_key("alice", "read:data")
            >>> d.revoke_key(info.id, by="admin").revoked_by
            'admin'
        """
        with self._engine.begin() as conn:
            row = self._require_key(conn, key_id)
            if row.revoked is None:
                conn.execute(
                    update(keys_t)
                    .where(keys_t.c.id == key_id)
                    .values(revoked=time.time(), revoked_by=by)
                )
                row = self._require_key(conn, key_id)
        return self._key_info(row)

    def verify_key(self, secret: str) -> KeyInfo:
        """The key ``secret`` is the secret of, if it is active; else
        :class:`NotAuthenticatedError` saying the key is unknown, revoked or expired (the
        secret is never repeated). An unknown key costs the time a known one does.

        Example:
            >>> Directory("sqlite://").verify_key("rbk_ABCDEFGHJKLM_" + "x" * 43)
            Traceback (most recent call last):
            ...
            runbroker.errors.NotAuthenticatedError: unknown API key
        """
        key_id = keyfmt.parse_secret(secret)
        with self._engine.connect() as conn:
            # A malformed secret is looked up too (as an id that names nothing), so that
            # it costs what a well-formed one does.
            row = conn.execute(select(keys_t).where(keys_t.c.id == (key_id or ""))).first()
        if row is None or not keyfmt.matches(secret, row.salt, row.digest):
            if row is None:
                keyfmt.spend_as_unknown(secret)
            raise NotAuthenticatedError("unknown API key")
        now = time.time()
        info = self._key_info(row)
        # Only the holder of the secret learns why it is refused.
        if info.revoked is not None:
            raise NotAuthenticatedError(f"API key {info.id} was revoked")
        if row.expires is not None and row.expires <= now:
            raise NotAuthenticatedError(
                f"API key {info.id} expired at {info.expires:%Y-%m-%d %H:%M} UTC"
            )
        if row.last_used is None or now - row.last_used >= LAST_USED_EVERY:
            with self._engine.begin() as conn:
                conn.execute(
                    update(keys_t)
                    .where(
                        keys_t.c.id == row.id,
                        (keys_t.c.last_used.is_(None))
                        | (keys_t.c.last_used <= now - LAST_USED_EVERY),
                    )
                    .values(last_used=now)
                )
            info = dataclasses.replace(info, last_used=_when(now))
        return info

    def _require_key(self, conn: Connection, key_id: str) -> Row:
        row = conn.execute(select(keys_t).where(keys_t.c.id == key_id)).first()
        return _found(row, f"no API key with id {key_id!r}")

    @staticmethod
    def _key_info(row: Row) -> KeyInfo:
        return KeyInfo(
            id=row.id,
            principal=row.principal,
            scopes=parse_scopes(row.scopes),
            defaults=json.loads(row.defaults),
            note=row.note,
            created=_when(row.created),
            expires=_when(row.expires),
            revoked=_when(row.revoked),
            revoked_by=row.revoked_by,
            last_used=_when(row.last_used),
        )

    # -- audit -------------------------------------------------------------------------------

    def record(
        self,
        principal: str,
        action: str,
        target: str = "",
        detail: Mapping[str, Any] | None = None,
        client: str = "",
    ) -> None:
        """Add a line to the audit log: ``principal`` did ``action`` to ``target``.

        Example:
            >>> d = Directory("sqlite://")
            >>> d.record("admin", "keys.revoke", "k1", client="cli")
            >>> d.audit_log()[0].action
            'keys.revoke'
        """
        conn: Connection
        with self._engine.begin() as conn:
            conn.execute(
                insert(audit_t).values(
                    time=time.time(),
                    principal=principal,
                    action=action,
                    target=target,
                    detail=json.dumps(dict(detail or {}), sort_keys=True, default=str),
                    client=client,
                )
            )

    def audit_log(
        self,
        since: datetime | float | None = None,
        principal: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """The audit log, newest first: since a time, of one principal, at most ``limit``."""
        query = select(audit_t).order_by(audit_t.c.time.desc(), audit_t.c.id.desc())
        if since is not None:
            query = query.where(audit_t.c.time >= _stamp(since))
        if principal is not None:
            query = query.where(audit_t.c.principal == principal)
        if limit is not None:
            if limit < 1:
                raise RequestError(f"limit {limit}: must be 1 or more")
            query = query.limit(limit)
        with self._engine.connect() as conn:
            return [
                AuditEntry(
                    id=r.id,
                    time=_when(r.time),
                    principal=r.principal,
                    action=r.action,
                    target=r.target,
                    detail=json.loads(r.detail),
                    client=r.client,
                )
                for r in conn.execute(query)
            ]


def directory_for(target: str) -> Directory:
    """The directory ``target`` names: a SQLAlchemy URL (``sqlite:///auth.db``,
    ``postgresql://host/db``), an SQLite file (a SQL catalog's holds its directory beside its
    runs; a new file is made), a folder catalog (its ``.runbroker/auth.db``), or a catalog's
    configured name.

    Example:
        >>> directory_for(str(tmp_path))
        Directory('sqlite:///.../.runbroker/auth.db')
        >>> directory_for("http://host:8000")
        Traceback (most recent call last):
        ...
        ValueError: --auth 'http://host:8000': a directory is a database (sqlite:// or ...
    """
    from ..config import resolve
    from ..store.urls import scheme_of

    text, _ = resolve(target)
    if "://" in text:
        scheme = scheme_of(text)
        if scheme in ("sqlite", "postgresql"):
            return Directory(text)
        if scheme != "file":
            raise ValueError(
                f"--auth {redact(text)!r}: a directory is a database (sqlite:// or "
                "postgresql:// URL), an SQLite file or a folder catalog, not a server's URL"
            )
        text = url2pathname(urlsplit(text).path)
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        (path / ".runbroker").mkdir(exist_ok=True)
        return Directory(f"sqlite:///{path / '.runbroker' / 'auth.db'}")
    if path.exists():
        with path.open("rb") as f:
            if path.stat().st_size and f.read(16) != b"SQLite format 3\x00":
                raise ValueError(f"--auth {target!r}: {path} is not an SQLite database")
    elif not path.parent.is_dir():
        raise ValueError(f"--auth {target!r}: the folder {path.parent} does not exist")
    return Directory(f"sqlite:///{path}")
