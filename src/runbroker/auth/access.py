"""A server's (or a notebook service's) access control, assembled from one configuration.

:class:`AccessControl` answers "who is this?" for each credential -- an API key from the
identity directory, an OIDC token from the facility's identity provider, or none at all --
as a :class:`~runbroker.auth.Principal`, and gives the catalog that principal sees.

The configuration is a YAML file (``runbroker serve CATALOG --access access.yaml``)::

    directory: postgresql://db/runbroker  # principals, groups, API keys, audit (default:
                                          # the catalog's own database)
    access_keys:                          # group kind -> start-document key (these are the
      proposal: proposal_id               # defaults)
      beamtime: beamtime_id
      data_session: data_session
      beamline: beamline_id
    public_runs: true                     # runs marked `public: true` are seen by everyone
    anonymous: false                      # callers with no credentials see public runs
    admins: [alice]                       # see and write every run, whatever the directory says
    groups:                               # where membership comes from (a list: the union)
      - {source: directory}
      - {source: yaml, file: groups.yaml, ttl: 300}
    oidc:                                 # bearer tokens of the identity provider
      issuer: https://login.example.org/realms/facility
      audience: runbroker

Example:
    >>> import runbroker
    >>> access = AccessControl.from_config({"directory": "sqlite://"})
    >>> _ = access.directory.add_principal("alice")
    >>> access.directory.add_member("alice", "proposal", "p1")
    >>> access.named("alice").groups
    frozenset({('proposal', 'p1')})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..catalog import Catalog
from ..errors import CatalogConfigError, NotAuthenticatedError
from .directory import Directory, directory_for
from .groups import ClaimGroups, CombinedGroups, DirectoryGroups, GroupSource, group_source
from .policy import AccessPolicy
from .principal import ANONYMOUS, USER_SCOPES, Principal

__all__ = ["AccessControl"]

_KNOWN = {"directory", "access_keys", "public_runs", "anonymous", "admins", "groups", "oidc"}


@dataclasses.dataclass
class AccessControl:
    """Identity and access for one catalog. ``policy``: how runs are tagged; ``directory``:
    principals, groups, keys and the audit log; ``groups``: where membership comes from;
    ``oidc``: the token verifier (None: no identity provider); ``admins``: names that are
    admins whatever the directory says; ``anonymous``: callers without credentials read the
    public runs (else they are refused)."""

    policy: AccessPolicy
    directory: Directory
    groups: GroupSource
    oidc: Any = None  # an OIDCVerifier; typed loosely so that PyJWT stays optional
    admins: frozenset[str] = frozenset()
    anonymous: bool = False

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | str | Path, catalog: str | None = None
    ) -> AccessControl:
        """From a mapping or a YAML file (see the module docstring). ``catalog`` (a path or
        URL) holds the directory when the configuration names none."""
        where = "the access configuration"
        if not isinstance(config, Mapping):
            where = str(config)
            try:
                config = yaml.safe_load(Path(config).read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                raise CatalogConfigError(f"access configuration {where}: {err}") from None
            if not isinstance(config, Mapping):
                raise CatalogConfigError(f"access configuration {where}: not a mapping")
        unknown = sorted(set(config) - _KNOWN)
        if unknown:
            raise CatalogConfigError(
                f"{where}: unknown setting(s) {', '.join(unknown)}; "
                f"the settings are {', '.join(sorted(_KNOWN))}"
            )
        target = config.get("directory") or catalog
        if not target:
            raise CatalogConfigError(f"{where}: name the directory's database (directory: URL)")
        directory = directory_for(str(target))
        try:
            policy = AccessPolicy(
                keys=dict(config.get("access_keys") or AccessPolicy().keys),
                public=bool(config.get("public_runs", True)),
            )
        except ValueError as err:
            raise CatalogConfigError(f"{where}: access_keys: {err}") from None
        oidc = None
        if config.get("oidc"):
            from .oidc import OIDCConfig, OIDCVerifier

            try:
                oidc = OIDCVerifier(OIDCConfig.from_mapping(config["oidc"]))
            except ValueError as err:
                raise CatalogConfigError(f"{where}: oidc: {err}") from None
        specs = config.get("groups") or [{"source": "directory"}]
        specs = [specs] if isinstance(specs, Mapping) else list(specs)
        sources = [group_source(spec, directory) for spec in specs]
        if oidc is not None and not any(isinstance(s, ClaimGroups) for s in sources):
            sources.append(ClaimGroups(oidc.config.groups_claim))
        admins = config.get("admins") or []
        if not isinstance(admins, list) or not all(isinstance(a, str) for a in admins):
            raise CatalogConfigError(f"{where}: admins must be a list of principal names")
        return cls(
            policy=policy,
            directory=directory,
            groups=sources[0] if len(sources) == 1 else CombinedGroups(*sources),
            oidc=oidc,
            admins=frozenset(admins),
            anonymous=bool(config.get("anonymous", False)),
        )

    @classmethod
    def for_directory(cls, directory: Directory, **options: Any) -> AccessControl:
        """Access control over ``directory`` alone (its groups, the default policy).

        Example:
            >>> AccessControl.for_directory(Directory("sqlite://")).anonymous
            False
        """
        options.setdefault("policy", AccessPolicy())
        options.setdefault("groups", DirectoryGroups(directory))
        return cls(directory=directory, **options)

    # -- who is calling

    def _principal(
        self,
        name: str,
        *,
        via: str,
        scopes: frozenset[str] | None = None,
        defaults: Mapping[str, str] | None = None,
        claims: Mapping[str, Any] | None = None,
        known_only: bool = False,
    ) -> Principal:
        info = self.directory.principal(name)
        if info is None and known_only:
            raise NotAuthenticatedError(f"principal {name!r} is not known to this server")
        own = info.scopes if info is not None else USER_SCOPES
        return Principal(
            name=name,
            kind=info.kind if info is not None else "user",
            groups=frozenset(self.groups.groups_of(name, claims)),
            scopes=frozenset(own if scopes is None else own & scopes),
            admin=name in self.admins or (info is not None and info.admin),
            defaults=dict(defaults or {}),
            via=via,
        )

    def from_key(self, secret: str) -> Principal:
        """The principal an API key proves; its scopes are the key's (within the
        principal's own). Raises :class:`~runbroker.errors.NotAuthenticatedError` for an
        unknown, revoked or expired key."""
        key = self.directory.verify_key(secret)
        return self._principal(
            key.principal, via="api-key", scopes=key.scopes, defaults=key.defaults, known_only=True
        )

    def from_token(self, token: str) -> Principal:
        """The principal an OIDC bearer token proves: its name and group claims, and its
        ``scope`` claim's scopes (a user's scopes when it has none of ours)."""
        if self.oidc is None:
            raise NotAuthenticatedError(
                "this server takes API keys only (it has no identity provider configured)"
            )
        claims = self.oidc.verify(token)
        name, scopes, _ = self.oidc.identity(claims)
        return self._principal(name, via="oidc", scopes=scopes, claims=claims)

    def anonymous_caller(self) -> Principal:
        """The caller that sent no credentials, when anonymous reading is on."""
        if not self.anonymous:
            raise NotAuthenticatedError(
                "this server needs credentials: an API key or a token of its identity provider "
                "(send 'Authorization: Bearer <key or token>', or "
                "runbroker.open(URL, api_key=...) or $RUNBROKER_API_KEY)"
            )
        return ANONYMOUS

    def named(self, name: str) -> Principal:
        """``name`` as the directory and group sources know it, for Python code that acts
        on a principal's behalf (a notebook service that has authenticated its user)."""
        return self._principal(name, via="local")

    def catalog_for(self, catalog: Catalog, principal: Principal) -> Catalog:
        """``catalog`` as ``principal`` sees it (see :func:`runbroker.auth.restrict`)."""
        from . import restrict

        return restrict(catalog, principal, self.policy)
