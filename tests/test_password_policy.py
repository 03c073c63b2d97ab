"""The password policy (NIST SP 800-63B-4, OWASP ASVS V2): each rule, its boundaries,
Unicode normalisation end to end, and every door a password comes in by."""

from __future__ import annotations

import argparse
import io
import unicodedata
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tessera_auth import app_state
from tessera_auth.cli_common import CommandError
from tessera_auth.cli_users import users_create
from tessera_auth.password_policy import (
    DEFAULT_MIN_LENGTH,
    MAX_LENGTH,
    PasswordPolicy,
    load_blocklist,
)
from tessera_auth.settings import ConfigError, Settings, load_settings
from tessera_verify.errors import WeakPassword, problem
from tests.conftest import extensions

from .conftest import register_and_login

Client = TestClient[Any, Any]

POLICY = PasswordPolicy()
EIGHT = PasswordPolicy(min_length=8)
GOOD = "correct horse battery staple"
# NFC spells "é" as one code point, NFD as "e" plus a combining accent.
FRENCH_NFC = unicodedata.normalize("NFC", "crème brûlée à la façon de maman")
FRENCH_NFD = unicodedata.normalize("NFD", FRENCH_NFC)


def _rule(policy: PasswordPolicy, password: str, username: str = "alice") -> str:
    with pytest.raises(WeakPassword) as caught:
        policy.check(password, username=username)
    assert caught.value.details["field"] == "password"
    rule = caught.value.details["rule"]
    assert isinstance(rule, str)
    return rule


def _varied(length: int) -> str:
    """``length`` code points, many of them different, on no list."""
    return ("qZ7!kW2#mX9$vB4%" * 10)[:length]


# --- length ---------------------------------------------------------------------------


def test_the_default_minimum_is_fifteen_as_nist_asks_of_a_single_factor() -> None:
    assert DEFAULT_MIN_LENGTH == 15
    assert _rule(POLICY, _varied(14)) == "too_short"
    assert POLICY.check(_varied(15), username="alice") == _varied(15)


def test_length_is_counted_in_code_points_after_nfkc() -> None:
    nfd = unicodedata.normalize("NFD", "éèêëàâäç")  # 8 letters, 16 code points as typed
    assert len(nfd) == 16
    with pytest.raises(WeakPassword) as caught:
        PasswordPolicy(min_length=9).check(nfd, username="alice")
    assert caught.value.details == {"field": "password", "rule": "too_short", "min_length": 9}
    assert "got 8" in caught.value.message
    assert EIGHT.check(nfd, username="alice") == unicodedata.normalize("NFC", nfd)


def test_four_nfd_letters_do_not_pass_an_eight_character_minimum() -> None:
    assert _rule(EIGHT, unicodedata.normalize("NFD", "éèêë")) == "too_short"


def test_the_maximum_bounds_what_argon2_gets() -> None:
    assert MAX_LENGTH == 128
    assert POLICY.check(_varied(128), username="alice") == _varied(128)
    with pytest.raises(WeakPassword) as caught:
        POLICY.check(_varied(129), username="alice")
    assert caught.value.details == {"field": "password", "rule": "too_long", "max_length": 128}


def test_the_form_to_hash_is_nfkc() -> None:
    fullwidth = "ｃｏｒｒｅｃｔ ｈｏｒｓｅ ｂａｔｔｅｒｙ"
    assert POLICY.check(fullwidth, username="alice") == "correct horse battery"
    assert POLICY.check(FRENCH_NFD, username="alice") == FRENCH_NFC


# --- what is known --------------------------------------------------------------------


def test_the_shipped_blocklist_is_the_whole_list() -> None:
    blocklist = load_blocklist()
    assert len(blocklist) == 19_640
    assert {"password", "12345678", "iloveyou", "1q2w3e4r5t6y7u8i9o0p"} <= blocklist


@pytest.mark.parametrize("password", ["password", "12345678", "PassWord", "iloveyou", "qwertyuiop"])
def test_common_passwords_are_refused_with_an_eight_character_minimum(password: str) -> None:
    assert _rule(EIGHT, password) == "common"


def test_a_long_entry_of_the_list_is_refused_at_the_default_minimum() -> None:
    assert _rule(POLICY, "1Q2W3E4R5T6Y7U8I9O0P") == "common"
    assert _rule(POLICY, "friend of emily  ") == "common"  # spaces do not hide it


def test_a_fullwidth_spelling_of_a_common_password_is_the_common_password() -> None:
    assert _rule(EIGHT, "ｐａｓｓｗｏｒｄ") == "common"


def test_a_handful_of_repeated_characters_is_refused() -> None:
    assert _rule(POLICY, "a" * 20) == "repetitive"
    assert _rule(POLICY, "abcdabcdabcdabcd") == "repetitive"
    assert POLICY.check("abcdeabcdeabcdea", username="alice")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alexander-the-great", "alexander-the-great"),
        ("alexander-the-great", "ALEXANDER-THE-GREAT"),
        ("alexander-the-great", "alexander-the-great2024!"),
        ("alexander-the-great-1", "alexander-the-great"),
        ("alice", "alicealicealice99"),
        ("alice", "ALICE-12345!"),
    ],
)
def test_the_username_and_trivial_variants_of_it_are_refused(username: str, password: str) -> None:
    assert _rule(EIGHT, password, username) == "username"


def test_a_passphrase_that_merely_mentions_the_username_is_accepted() -> None:
    assert POLICY.check("alice's long garden path", username="alice")


def test_the_service_name_is_refused_like_the_username() -> None:
    assert _rule(EIGHT, "Tessera2024!") == "service_name"


def test_there_are_no_composition_rules() -> None:
    for password in ("all lower case words here", "ALL UPPER CASE WORDS HERE", "853920174638291"):
        assert POLICY.check(password, username="alice") == password


# --- settings ---------------------------------------------------------------------------

DEVELOPMENT = {
    "TESSERA_ENV": "development",
    "DATABASE_URL": "postgresql://tessera@127.0.0.1:5432/tessera",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def test_the_minimum_and_the_argon2_bound_come_from_the_environment() -> None:
    settings = load_settings(
        DEVELOPMENT | {"TESSERA_PASSWORD_MIN_LENGTH": "12", "TESSERA_ARGON2_MAX_PENDING": "3"}
    )
    assert settings.password_min_length == 12
    assert settings.argon2_max_pending == 3
    defaults = load_settings(DEVELOPMENT)
    assert defaults.password_min_length == 15
    assert defaults.argon2_max_pending is None  # 2 x CPUs + 2, decided by the hasher


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TESSERA_PASSWORD_MIN_LENGTH", "7"),
        ("TESSERA_PASSWORD_MIN_LENGTH", "65"),
        ("TESSERA_ARGON2_MAX_PENDING", "-1"),
    ],
)
def test_out_of_range_values_are_refused_at_start(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(DEVELOPMENT | {name: value})
    assert name in str(caught.value)


# --- over HTTP and on the command line ---------------------------------------------------


async def test_registration_refuses_a_weak_password_naming_the_rule(auth_client: Client) -> None:
    response = await auth_client.post(
        "/auth/register", json={"username": "alice", "password": "alice-alice-2024!"}
    )
    assert response.status == 400
    assert await response.json() == problem(
        400,
        "weak_password",
        "password must not be the username, contain it with little else, or be part of it",
        field="password",
        rule="username",
    )


async def test_a_password_set_in_nfc_logs_in_typed_in_nfd(auth_client: Client) -> None:
    response = await auth_client.post(
        "/auth/register", json={"username": "amelie", "password": FRENCH_NFC}
    )
    assert response.status == 201, await response.text()
    for typed in (FRENCH_NFD, FRENCH_NFC):
        response = await auth_client.post(
            "/auth/password-check", json={"username": "amelie", "password": typed}
        )
        assert response.status == 200, await response.text()


async def test_a_hash_of_the_unnormalised_password_still_logs_in_and_is_migrated(
    auth_client: Client,
) -> None:
    """Accounts made before normalisation hold the password as typed (here NFD)."""
    response = await auth_client.post(
        "/auth/register", json={"username": "amelie", "password": GOOD}
    )
    user_id = (await response.json())["user"]["id"]
    accounts = auth_client.app[app_state.ACCOUNTS]
    legacy = await accounts.hasher.hash(FRENCH_NFD)
    user = await accounts.users.by_id(user_id)
    assert user is not None
    await accounts.users.replace_hash(user_id, user.password_hash, legacy)

    login = {"username": "amelie", "password": FRENCH_NFD}
    assert (await auth_client.post("/auth/password-check", json=login)).status == 200
    migrated = await accounts.users.by_id(user_id)
    assert migrated is not None
    assert migrated.password_hash != legacy
    assert await accounts.hasher.verify(migrated.password_hash, FRENCH_NFC)
    # Now the other spelling works too.
    login["password"] = FRENCH_NFC
    assert (await auth_client.post("/auth/password-check", json=login)).status == 200


async def test_password_change_applies_the_policy_to_the_new_password(
    auth_client: Client,
) -> None:
    body = await register_and_login(auth_client, credential="token", username="bob-the-builder")
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    for new, rule in (("short one", "too_short"), ("bob-the-builder!!", "username")):
        response = await auth_client.post(
            "/auth/password",
            json={"current_password": body["password"], "new_password": new},
            headers=headers,
        )
        assert response.status == 400, await response.text()
        error = await response.json()
        assert error["error"] == "weak_password"
        assert extensions(error) == {"field": "new_password", "rule": rule} | (
            {"min_length": 15} if rule == "too_short" else {}
        )


async def test_password_change_accepts_the_current_password_in_another_normal_form(
    auth_client: Client,
) -> None:
    response = await auth_client.post(
        "/auth/register", json={"username": "amelie", "password": FRENCH_NFC}
    )
    assert response.status == 201
    login = await auth_client.post(
        "/auth/login", json={"username": "amelie", "password": FRENCH_NFC, "credential": "token"}
    )
    token = (await login.json())["access_token"]
    response = await auth_client.post(
        "/auth/password",
        json={"current_password": FRENCH_NFD, "new_password": "a new and longer passphrase"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status == 200, await response.text()


async def test_the_admin_command_refuses_a_weak_password(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("password\n"))
    args = argparse.Namespace(username="carol", password_stdin=True)
    with pytest.raises(CommandError, match="at least 15 characters"):
        await users_create(settings, args)
    monkeypatch.setattr("sys.stdin", io.StringIO("carol's passphrase\n"))
    await users_create(settings, args)
