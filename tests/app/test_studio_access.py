"""Accounts, roles and single-user mode (app/studio/access.py), who may use the studio (Studio.user,
require_researcher) and the per-user submission limit; `distill-studio up --no-auth` on a non-local host."""

from __future__ import annotations

import hashlib

import gradio as gr
import pytest
from typer.testing import CliRunner

from app.cli import app
from app.studio.access import LOCAL_USER, Account, Accounts, check_single_user_host, hash_password, parse_accounts
from app.studio.context import SUBMITS_PER_MINUTE
from tests.app.studio_env import close_studio, open_studio, use_data_dir

FAST = 1000  # pbkdf2 iterations for tests that only need a valid hash


# -- parse_accounts ------------------------------------------------------------------------------------------

def test_parse_accounts_reads_items_separated_by_commas_and_lines():
    text = "alice:pw1:researcher, bob:pw2:rater\n# a comment line\n\n  carol:pa:ss:researcher  \n"
    assert parse_accounts(text, "STUDIO_USERS") == [Account("alice", "pw1", "researcher"), Account("bob", "pw2", "rater"),
                                                    Account("carol", "pa:ss", "researcher")]


def test_parse_accounts_keeps_a_hash_whole():
    stored = hash_password("s3cret", iterations=FAST, salt="abcd")
    assert stored == f"pbkdf2_sha256${FAST}$abcd${hashlib.pbkdf2_hmac('sha256', b's3cret', b'abcd', FAST).hex()}"
    assert parse_accounts(f"alice:{stored}:researcher", "STUDIO_USERS") == [Account("alice", stored, "researcher")]


@pytest.mark.parametrize("item, names", [
    ("alice:pw:admin", ("STUDIO_USERS", "'alice'", "'admin'", "researcher, rater")),
    ("alice:pw", ("STUDIO_USERS", "item 1", "name:password:role", "'alice'")),
    ("alice", ("STUDIO_USERS", "item 1", "'alice'")),
    (":pw:rater", ("STUDIO_USERS", "item 1", "name:password:role")),
    ("alice::rater", ("STUDIO_USERS", "item 1", "'alice'")),
    ("alice:pbkdf2_sha256$1$salt:rater", ("STUDIO_USERS", "'alice'", "malformed")),
    ("alice:pbkdf2_sha256$many$salt$00ff:rater", ("STUDIO_USERS", "'alice'", "malformed")),
    ("alice:pbkdf2_sha256$0$salt$00ff:rater", ("STUDIO_USERS", "'alice'", "malformed")),
])
def test_parse_accounts_errors_name_the_source_and_the_user(item, names):
    with pytest.raises(ValueError) as error:
        parse_accounts(item, "STUDIO_USERS")
    for name in names:
        assert name in str(error.value), str(error.value)


def test_parse_accounts_errors_count_items_after_comments():
    with pytest.raises(ValueError, match=r"^STUDIO_USERS: item 3 must be name:password:role, got 'carol'"):
        parse_accounts("alice:a:researcher\n# comment\ncarol", "STUDIO_USERS")


def test_parse_accounts_names_the_file_as_source():
    with pytest.raises(ValueError, match=r"^STUDIO_USERS_FILE: user 'bob' has role 'boss'"):
        parse_accounts("bob:pw:boss", "STUDIO_USERS_FILE")


def test_a_name_defined_twice_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"STUDIO_USERS: user 'alice' is defined twice"):
        Accounts(parse_accounts("alice:a:researcher,bob:b:rater,alice:c:rater", "STUDIO_USERS"))


# -- passwords and roles -------------------------------------------------------------------------------------

def test_hashed_passwords_verify_and_wrong_ones_fail():
    accounts = Accounts([Account("alice", hash_password("s3cret"), "researcher"),
                         Account("bob", hash_password("hunter2", iterations=FAST), "rater"),
                         Account("carol", "plain", "researcher")])
    assert accounts.check("alice", "s3cret")
    assert accounts.check("bob", "hunter2")
    assert accounts.check("carol", "plain")
    assert not accounts.check("alice", "s3cret ")
    assert not accounts.check("alice", "hunter2")
    assert not accounts.check("bob", "")
    assert not accounts.check("carol", "Plain")
    assert not accounts.check("dave", "plain")  # no such user


def test_the_studio_login_admits_only_researchers():
    accounts = Accounts([Account("alice", hash_password("a", iterations=FAST), "researcher"), Account("bob", "b", "rater")])
    studio, rate = accounts.checker("researcher"), accounts.checker("rater")
    assert studio("alice", "a") and not studio("bob", "b") and not studio("alice", "b")
    assert rate("bob", "b") and not rate("alice", "a") and not rate("bob", "a")


def test_hashes_are_salted():
    first, second = hash_password("same", iterations=FAST), hash_password("same", iterations=FAST)
    assert first != second
    assert Accounts([Account("a", first, "rater")]).check("a", "same")
    assert Accounts([Account("a", second, "rater")]).check("a", "same")


def test_roles_and_names():
    accounts = Accounts(parse_accounts("alice:a:researcher,bob:b:rater,carol:c:rater", "STUDIO_USERS"))
    assert not accounts.single_user
    assert [accounts.role(n) for n in ("alice", "bob", "nobody", "", None)] == ["researcher", "rater", None, None, None]
    assert accounts.names("rater") == ["bob", "carol"]
    assert accounts.names("researcher") == ["alice"]
    single = Accounts(None)
    assert single.single_user
    assert single.role(None) == single.role("anyone") == "researcher"


# -- Accounts.from_settings ----------------------------------------------------------------------------------

def test_no_accounts_without_no_auth_is_refused_naming_studio_users():
    with pytest.raises(ValueError, match=r"STUDIO_USERS=name:password:role") as error:
        Accounts.from_settings("", None, no_auth=False)
    assert "--no-auth" in str(error.value)


def test_comments_only_count_as_no_accounts(tmp_path):
    path = tmp_path / "users"
    path.write_text("# nobody yet\n\n")
    with pytest.raises(ValueError, match=r"no accounts configured"):
        Accounts.from_settings("", path, no_auth=False)


def test_a_missing_users_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "users.txt"
    with pytest.raises(ValueError, match=r"^STUDIO_USERS_FILE: .*nope/users\.txt.* is not a file"):
        Accounts.from_settings("alice:a:researcher", missing, no_auth=False)
    with pytest.raises(ValueError, match=r"^STUDIO_USERS_FILE: .* is not a file"):
        Accounts.from_settings("", tmp_path, no_auth=False)  # a folder is not a file


def test_accounts_from_the_environment_and_a_file(tmp_path, monkeypatch):
    path = tmp_path / "users"
    path.write_text(f"# raters\nbob:{hash_password('b-pass', iterations=FAST)}:rater\n")
    settings = use_data_dir(monkeypatch, tmp_path / "data", users="alice:a-pass:researcher", users_file=str(path))
    accounts = Accounts.from_settings(settings.users, settings.users_file, no_auth=False)
    assert (accounts.role("alice"), accounts.role("bob")) == ("researcher", "rater")
    assert accounts.check("bob", "b-pass") and not accounts.check("bob", "a-pass")


def test_a_user_in_both_the_variable_and_the_file_is_refused(tmp_path):
    path = tmp_path / "users"
    path.write_text("alice:other:rater\n")
    with pytest.raises(ValueError, match=r"'alice' is defined twice"):
        Accounts.from_settings("alice:a:researcher", path, no_auth=False)


def test_no_auth_is_single_user():
    accounts = Accounts.from_settings("", None, no_auth=True)
    assert accounts.single_user and accounts.role(None) == "researcher"


# -- single-user mode serves localhost only ------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_single_user_mode_accepts_loopback(host):
    check_single_user_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "example.com", ""])
def test_single_user_mode_refuses_other_hosts_naming_host(host):
    with pytest.raises(ValueError, match=r"^host: --no-auth serves only localhost") as error:
        check_single_user_host(host)
    assert repr(host) in str(error.value)


@pytest.mark.parametrize("args, names", [
    (["--no-auth", "--host", "0.0.0.0"], "host: --no-auth serves only localhost"),
    (["--host", "127.0.0.1"], "STUDIO_USERS"),  # no accounts and no --no-auth
])
def test_up_refuses_before_serving_anything(tmp_path, monkeypatch, args, names):
    data = tmp_path / "data"
    use_data_dir(monkeypatch, data)
    result = CliRunner().invoke(app, ["up", "--no-worker", "--port", "9", *args])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr
    assert not (data / "studio.db").exists()  # it stopped before migrating, let alone serving


# -- Studio.user, require_researcher, throttle ---------------------------------------------------------------

@pytest.fixture
def studio(tmp_path, monkeypatch):
    use_data_dir(monkeypatch, tmp_path / "data")
    ctx = open_studio(Accounts(parse_accounts("alice:a:researcher,bob:b:rater", "STUDIO_USERS")))
    yield ctx
    close_studio(ctx)


def test_a_researcher_may_use_the_studio(studio):
    request = gr.Request(username="alice")
    assert studio.user(request) == "alice"
    assert studio.require_researcher(request) == "alice"


def test_a_rater_is_refused(studio):
    request = gr.Request(username="bob")
    assert studio.user(request) == "bob"
    with pytest.raises(PermissionError, match=r"^bob is a rater account"):
        studio.require_researcher(request)


@pytest.mark.parametrize("request_", [None, gr.Request(), gr.Request(username="")])
def test_requests_without_a_user_are_refused(studio, request_):
    with pytest.raises(PermissionError, match="sign in first"):
        studio.user(request_)
    with pytest.raises(PermissionError, match="sign in first"):
        studio.require_researcher(request_)


def test_an_unknown_user_is_not_a_researcher(studio):
    with pytest.raises(PermissionError, match="^mallory "):
        studio.require_researcher(gr.Request(username="mallory"))


def test_single_user_mode_is_the_local_researcher(tmp_path, monkeypatch):
    use_data_dir(monkeypatch, tmp_path / "data")
    ctx = open_studio(Accounts(None))
    try:
        assert ctx.user(None) == ctx.require_researcher(None) == LOCAL_USER
        assert ctx.require_researcher(gr.Request(username="someone")) == LOCAL_USER
    finally:
        close_studio(ctx)


def test_throttle_limits_each_user_per_minute(studio):
    for i in range(SUBMITS_PER_MINUTE):
        studio.throttle("alice", now=100.0 + i)
    with pytest.raises(ValueError, match=rf"at most {SUBMITS_PER_MINUTE} a minute per user"):
        studio.throttle("alice", now=129.5)
    studio.throttle("bob", now=129.5)  # another user has their own budget
    with pytest.raises(ValueError):
        studio.throttle("alice", now=160.0)  # the first submission is exactly 60 s old: still counted
    studio.throttle("alice", now=160.5)  # ... and now it is not; the refused calls took no slot
    with pytest.raises(ValueError):
        studio.throttle("alice", now=160.6)  # the second (t = 101) is still within the minute
    studio.throttle("alice", now=161.5)
