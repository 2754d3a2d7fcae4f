"""OIDC bearer tokens checked against a real identity provider on loopback (runbroker.testing.idp):
real RSA keys, a real JWKS fetched over HTTP, keys rotated while a verifier is in use."""

from __future__ import annotations

import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from runbroker.auth.oidc import OIDCConfig, OIDCVerifier, looks_like_jwt
from runbroker.errors import NotAuthenticatedError, RunbrokerError, ServerUnreachableError
from runbroker.testing.idp import IdentityProvider, SigningKey
from runbroker.testing.server import free_port


@pytest.fixture
def idp():
    with IdentityProvider() as provider:
        yield provider


def refused(verifier: OIDCVerifier, token: str) -> str:
    """The reason ``token`` is refused; it must not repeat the token or its signature."""
    with pytest.raises(NotAuthenticatedError) as info:
        verifier.verify(token)
    message = str(info.value)
    signature = token.rsplit(".", 1)[-1]
    assert token not in message and (not signature or signature not in message)
    assert info.value.status == 401
    return message


def test_a_valid_token_gives_its_claims_and_identity(idp):
    verifier = OIDCVerifier(idp.config())
    token = idp.token("alice", groups=["proposal:p1", "beamline:45id"], scope="openid read:data")
    claims = verifier.verify(token)
    assert claims["sub"] == "alice" and claims["iss"] == idp.url
    name, scopes, groups = verifier.identity(claims)
    assert (name, scopes, groups) == ("alice", {"read:data"}, ("proposal:p1", "beamline:45id"))


def test_an_expired_token_is_refused_past_the_leeway(idp):
    verifier = OIDCVerifier(idp.config(leeway=30))
    assert verifier.verify(idp.token("alice", expires_in=-10))["sub"] == "alice"  # clock skew
    assert refused(verifier, idp.token("alice", expires_in=-120)).startswith(
        "the token has expired"
    )


def test_a_token_not_valid_yet_is_refused(idp):
    verifier = OIDCVerifier(idp.config())
    assert "not valid yet" in refused(verifier, idp.token("alice", not_before=3600))
    issued_later = idp.token("alice", extra={"iat": int(time.time()) + 3600})
    assert "not valid yet" in refused(verifier, issued_later)
    assert verifier.verify(idp.token("alice", not_before=10))["sub"] == "alice"  # leeway


def test_a_forged_signature_is_refused(idp):
    verifier = OIDCVerifier(idp.config())
    forged = idp.forge("alice", groups=["proposal:p1"])
    assert jwt.get_unverified_header(forged)["kid"] == idp.kid
    assert refused(verifier, forged) == "the token's signature does not verify"
    # a token whose claims were changed after signing, keeping the signature
    header, _, signature = idp.token("alice").split(".")
    other = idp.token("admin").split(".")[1]
    assert refused(verifier, f"{header}.{other}.{signature}") == (
        "the token's signature does not verify"
    )


def test_a_wrong_issuer_is_named(idp):
    verifier = OIDCVerifier(idp.config())
    message = refused(verifier, idp.token("alice", issuer="https://other.example"))
    assert message == (
        "the token was issued by 'https://other.example', not this server's identity "
        f"provider {idp.url}"
    )


def test_a_wrong_audience_is_named(idp):
    verifier = OIDCVerifier(idp.config())
    message = refused(verifier, idp.token("alice", audience="grafana"))
    assert message == "the token is for audience 'grafana', not 'runbroker'"
    assert verifier.verify(idp.token("alice", audience=["grafana", "runbroker"]))


def test_missing_claims_are_named(idp):
    verifier = OIDCVerifier(idp.config())
    assert refused(verifier, idp.token("alice", extra={"exp": None})) == (
        "the token has no 'exp' claim"
    )


def test_alg_none_and_hs256_are_refused(idp):
    verifier = OIDCVerifier(idp.config())
    claims = jwt.decode(idp.token("admin"), options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": idp.kid})
    assert looks_like_jwt(unsigned)
    assert "algorithm 'none'" in refused(verifier, unsigned)
    # HS256 keyed with the provider's *public* key, which anyone can fetch: the classic
    # confusion attack
    public = idp.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs256 = _hmac_token(claims, public, idp.kid)
    assert "algorithm 'HS256'; this server takes RS256, ES256" in refused(verifier, hs256)
    assert idp.jwks_fetches == 0  # refused before any key was asked for


def _hmac_token(claims: dict, secret: bytes, kid: str) -> str:
    # PyJWT refuses to HMAC-sign with a PEM key (rightly); build the token the way an
    # attacker would.
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def test_rotation_fetches_the_new_key_and_drops_the_old(idp):
    verifier = OIDCVerifier(idp.config(jwks_cooldown=0))
    before = idp.token("alice")
    assert verifier.verify(before)["sub"] == "alice"
    assert idp.jwks_fetches == 1
    idp.rotate()
    after = idp.token("alice")
    assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
    assert verifier.verify(after)["sub"] == "alice"  # an unknown kid: the keys fetched again
    assert idp.jwks_fetches == 2
    assert verifier.verify(after) and idp.jwks_fetches == 2  # and kept
    message = refused(verifier, before)
    assert message == "the token is signed with a key the identity provider does not publish"


def test_rotation_keeping_the_old_key_verifies_both(idp):
    verifier = OIDCVerifier(idp.config(jwks_cooldown=0))
    before = idp.token("alice")
    assert verifier.verify(before)
    idp.rotate(keep_old=True)
    assert verifier.verify(idp.token("bob"))["sub"] == "bob"
    assert verifier.verify(before)["sub"] == "alice"


def test_an_es256_key_after_rotation(idp):
    verifier = OIDCVerifier(idp.config(jwks_cooldown=0))
    assert verifier.verify(idp.token("alice"))
    idp.rotate(algorithm="ES256")
    token = idp.token("bob")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert verifier.verify(token)["sub"] == "bob"
    assert refused(verifier, idp.forge("bob")) == "the token's signature does not verify"
    only_rsa = OIDCVerifier(idp.config(algorithms=("RS256",)))
    assert "algorithm 'ES256'; this server takes RS256" in refused(only_rsa, token)


def test_unknown_keys_refetch_at_most_once_per_cooldown(idp):
    verifier = OIDCVerifier(idp.config(jwks_cooldown=60))
    assert verifier.verify(idp.token("alice"))
    for i in range(20):
        made_up = idp.token("mallory", key=SigningKey(f"made-up-{i}", idp.key.private))
        assert "does not publish" in refused(verifier, made_up)
    assert idp.jwks_fetches == 2  # the first fetch and one forced refetch, not 21


def test_keys_are_fetched_once_for_many_verifications_across_threads(idp):
    verifier = OIDCVerifier(idp.config())
    tokens = [idp.token(f"user{i}", groups=[f"proposal:p{i}"]) for i in range(8)]
    errors: list[BaseException] = []

    def work(token: str) -> None:
        try:
            for _ in range(25):
                assert verifier.verify(token)["iss"] == idp.url
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)


def test_keys_are_fetched_again_after_their_ttl(idp):
    verifier = OIDCVerifier(idp.config(jwks_ttl=0.2))
    token = idp.token("alice")
    assert verifier.verify(token) and idp.jwks_fetches == 1
    time.sleep(0.3)
    assert verifier.verify(token) and idp.jwks_fetches == 2


def test_a_provider_that_is_down_gives_a_clear_error():
    port = free_port()
    verifier = OIDCVerifier(OIDCConfig(f"http://127.0.0.1:{port}", "runbroker", timeout=2))
    with IdentityProvider() as idp:
        token = idp.token("alice")
    with pytest.raises(ServerUnreachableError) as info:
        verifier.verify(token)
    message = str(info.value)
    assert message.startswith(
        f"the identity provider did not answer at http://127.0.0.1:{port}/.well-known/"
    )
    assert token not in message and info.value.status == 503


def test_a_provider_going_down_after_discovery_gives_a_clear_error(idp):
    # idp.stop() takes 0.1-0.2 s (uvicorn's 0.1 s tick, more under load): a TTL well past it
    ttl = 3.0
    verifier = OIDCVerifier(idp.config(jwks_ttl=ttl, timeout=2))
    token = idp.token("alice")
    assert verifier.verify(token)
    fetched = time.monotonic()
    idp.stop()
    assert verifier.verify(token)  # the cached keys serve until their TTL
    time.sleep(max(0.0, fetched + ttl - time.monotonic()) + 0.1)
    with pytest.raises(ServerUnreachableError, match="keys could not be fetched from http"):
        verifier.verify(token)


def test_a_discovery_document_naming_another_issuer_is_refused(idp):
    verifier = OIDCVerifier(
        idp.config(
            issuer="https://id.example", discovery_url=idp.url + "/.well-known/openid-configuration"
        )
    )
    with pytest.raises(RunbrokerError, match=r"names its issuer .* not the configured"):
        verifier.verify(idp.token("alice"))


def test_identity_reads_configured_claims():
    config = OIDCConfig(
        "https://id.example",
        "rb",
        name_claim="email",
        groups_claim="realm_access.roles",
        scopes_claim="scp",
    )
    verifier = OIDCVerifier(config)
    claims = {
        "sub": "f81d4fae",
        "email": "alice@example.org",
        "realm_access": {"roles": ["proposal:p1", 7, "beamtime:b2"]},
        "scp": ["read:metadata", "write:runs", "email"],
    }
    assert verifier.identity(claims) == (
        "alice@example.org",
        {"read:metadata", "write:runs"},
        ("proposal:p1", "beamtime:b2"),
    )
    # no claim of ours: None (the server gives user scopes); no name: the subject
    assert verifier.identity({"sub": "f81d4fae", "scp": "openid profile"}) == (
        "f81d4fae",
        None,
        (),
    )
    with pytest.raises(NotAuthenticatedError, match="names no user"):
        verifier.identity({"email": 3})


def test_config_from_a_mapping_names_what_is_wrong():
    config = OIDCConfig.from_mapping(
        {"issuer": "https://id.example", "audience": "rb", "algorithms": ["RS256"]}
    )
    assert config.algorithms == ("RS256",)
    assert config.discovery == "https://id.example/.well-known/openid-configuration"
    with pytest.raises(ValueError, match="unknown setting 'audiense'"):
        OIDCConfig.from_mapping({"issuer": "https://id.example", "audiense": "rb"})
    with pytest.raises(ValueError, match=r"missing setting.*: audience"):
        OIDCConfig.from_mapping({"issuer": "https://id.example"})
    with pytest.raises(ValueError, match="may not include HS256, none"):
        OIDCConfig("https://id.example", "rb", algorithms=("RS256", "HS256", "none"))
    with pytest.raises(ValueError, match="must be an http"):
        OIDCConfig("id.example", "rb")
    assert "s3cret" not in repr(OIDCConfig("https://id.example", "rb", client_secret="s3cret"))


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", True),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.", True),
        ("rb_k3Xv9q-LZ0s2HqQ", False),
        ("a.b", False),
        ("a.b.c.d", False),
        ("a+b.c.d", False),
    ],
)
def test_looks_like_jwt(token, expected):
    assert looks_like_jwt(token) is expected


def test_a_garbled_token_is_refused_without_a_fetch(idp):
    verifier = OIDCVerifier(idp.config())
    assert refused(verifier, "eyJub3QganNvbg.eyJzdWIiOiJhIn0.c2ln") == (
        "the token is not a JWT that can be read"
    )
    assert idp.jwks_fetches == 0


def test_malformed_tokens_are_refused_as_such(idp):
    """Tokens of a JWT's shape that are not JWTs, or carry odd headers and payloads, are a
    401 naming the problem, never another error."""
    import base64
    import json

    def part(value) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    verifier = OIDCVerifier(idp.config())
    good_head, good_body, good_sig = idp.token("alice").split(".")
    head = {"alg": "RS256", "kid": idp.kid}
    for token in [
        f"{part(b'not json')}.{good_body}.{good_sig}",
        f"{part([1, 2])}.{good_body}.{good_sig}",
        f"{part({'alg': ['RS256']})}.{good_body}.{good_sig}",
        f"{part({**head, 'kid': 7})}.{good_body}.{good_sig}",
        f"{part(head)}.{part(b'not json')}.{good_sig}",
        f"{part(head)}.{part([1])}.{good_sig}",
        f"{good_head}.{good_body}.{good_sig[:-8]}",
        f"{good_head}.{good_body}.AAAA",
    ]:
        refused(verifier, token)
