"""wstun-server's users on the command line: new-token, --users-file, --reload-interval."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from wstun.server.cli import main
from wstun.server.users import parse_users


@pytest.fixture(autouse=True)
def no_wstun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options come from the arguments only, not from a WSTUN_* the shell happens to have."""
    for name in list(os.environ):
        if name.startswith("WSTUN_"):
            monkeypatch.delenv(name)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def users_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(text)
    return path


GOOD = (
    f'[users.alice]\ntoken_sha256 = "{sha("a")}"\nallow = ["db:5432"]\nmax_tunnels = 2\n\n'
    f'[users.robot]\ntoken_sha256 = "{sha("r")}"\n'
)


def test_new_token() -> None:
    """The token goes to stderr, the table to stdout; the table holds the token's SHA-256."""
    result = invoke("new-token", "alice")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("token for alice (shown once;")
    token = lines[1]
    assert len(lines) == 2
    assert len(token) >= 43
    assert token not in result.stdout
    assert result.stdout.startswith("[users.alice]\n")
    assert f'token_sha256 = "{sha(token)}"' in result.stdout
    users = parse_users(result.stdout, "stdout")
    assert users.names == ["alice"]
    found = users.identify(token)
    assert found is not None
    assert found.name == "alice"
    again = invoke("new-token", "alice")
    assert again.stderr.splitlines()[1] != token


def test_new_tokens_append_to_one_file(tmp_path: Path) -> None:
    """`new-token NAME >> users.toml` twice: a file with both users, each with their token."""
    first, second = invoke("new-token", "alice"), invoke("new-token", "robot")
    path = users_file(tmp_path, first.stdout + second.stdout)
    users = parse_users(path.read_text(), str(path))
    assert users.names == ["alice", "robot"]
    for result, name in [(first, "alice"), (second, "robot")]:
        found = users.identify(result.stderr.splitlines()[1])
        assert found is not None
        assert found.name == name
    checked = invoke("--users-file", str(path), "--check")
    assert checked.exit_code == 0, checked.output
    assert "users: 2: alice, robot" in checked.output


@pytest.mark.parametrize("name", ["bad name", "-alice", "a" * 65])
def test_new_token_bad_name(name: str) -> None:
    """A name that can't be a user is a usage error (2) saying what a name may hold; no token."""
    result = invoke("new-token", "--", name)
    assert result.exit_code == 2
    assert "bad user name" in result.stderr
    assert "NAME" in result.stderr
    assert result.stdout == ""


def test_new_token_needs_a_name() -> None:
    result = invoke("new-token")
    assert result.exit_code == 2
    assert "NAME" in result.stderr


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (GOOD + "colour = 'blue'\n", "users.toml:8: users.robot: unknown key 'colour'"),
        (
            GOOD.replace("max_tunnels = 2", "max_tunnels = 0"),
            "users.toml:4: users.alice: max_tunnels",
        ),
        (GOOD.replace('"db:5432"', '"db"'), "users.toml:3: users.alice: allow: bad rule 'db'"),
        (
            GOOD.replace(sha("r"), sha("a")),
            "users.toml:7: users.robot: token_sha256 is also users.alice's",
        ),
        ("not toml\n", "users.toml: not valid TOML"),
    ],
)
def test_broken_users_file_is_a_startup_error(tmp_path: Path, text: str, shown: str) -> None:
    """--check with a broken users file exits 2, naming the option, file:line, user and key."""
    path = users_file(tmp_path, text)
    result = invoke("--users-file", str(path), "--check")
    assert result.exit_code == 2
    assert "--users-file" in result.output
    assert f"{tmp_path}/{shown}" in result.output
    assert "listen:" not in result.output


def test_missing_users_file(tmp_path: Path) -> None:
    result = invoke("--users-file", str(tmp_path / "nowhere.toml"), "--check")
    assert result.exit_code == 2
    assert "--users-file" in result.output
    assert "does not exist" in result.output


def test_good_users_file_is_shown(tmp_path: Path) -> None:
    """--check shows how many users and who, besides the server-wide rules."""
    path = users_file(tmp_path, GOOD)
    result = invoke("--users-file", str(path), "--allow", "cache:6379", "--check")
    assert result.exit_code == 0, result.output
    assert "users: 2: alice, robot" in result.output
    assert "allow: cache:6379" in result.output
    assert "reload interval: off" in result.output
    empty = users_file(tmp_path, "# nobody yet\n")
    result = invoke("--users-file", str(empty), "--check")
    assert result.exit_code == 0, result.output
    assert "users: 0" in result.output
    result = invoke("--check")
    assert "users: (no users file)" in result.output


def test_reload_interval_needs_a_file() -> None:
    """--reload-interval with no file to look at is a usage error naming it."""
    result = invoke("--reload-interval", "5", "--check")
    assert result.exit_code == 2
    assert "--reload-interval" in result.output
    assert "--users-file or --policy-file" in result.output


@pytest.mark.parametrize(
    ("option", "text"),
    [("--users-file", GOOD), ("--policy-file", 'allow = ["db:5432"]\n')],
)
def test_reload_interval_with_a_file(tmp_path: Path, option: str, text: str) -> None:
    """With a file to look at, --check shows the interval."""
    path = users_file(tmp_path, text)
    result = invoke("--reload-interval", "5", option, str(path), "--check")
    assert result.exit_code == 0, result.output
    assert "reload interval: 5s" in result.output
    result = invoke("--reload-interval", "0.5", option, str(path), "--check")
    assert "reload interval: 0.5s" in result.output
    result = invoke("--reload-interval", "0", option, str(path), "--check")
    assert "reload interval: off" in result.output


def test_reload_interval_must_not_be_negative(tmp_path: Path) -> None:
    path = users_file(tmp_path, GOOD)
    result = invoke("--reload-interval", "-1", "--users-file", str(path), "--check")
    assert result.exit_code == 2
    assert "--reload-interval" in result.output


def test_help_mentions_users() -> None:
    """--help names the users file and new-token; new-token --help says where the token goes."""
    result = invoke("--help")
    assert result.exit_code == 0
    for word in ["--users-file", "--reload-interval", "new-token"]:
        assert word in result.output
    result = invoke("new-token", "--help")
    assert result.exit_code == 0
    assert "stderr" in result.output
