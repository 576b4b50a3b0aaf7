"""wstun-client --config FILE: real TOML files, what --check shows and what errors say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from wstun.client import cli
from wstun.client.cli import main
from wstun.client.configfile import key_line

# The README's example; the line numbers below are its lines.
EXAMPLE = """\
url = "wss://tunnel.example.com/tunnel"
token_file = "~/.config/wstun/token"
local = ["5432:staging-db.internal:5432"]
dynamic = ["1080"]
remote = ["9001:127.0.0.1:3000"]
pool = 5

[profiles.prod]
url = "wss://tunnel.prod.example.com/tunnel"
local = ["15432:prod-db.internal:5432"]

[profiles.dev]
url = "ws://127.0.0.1:8080/"
"""

SIMPLE = 'url = "ws://h/"\nlocal = ["1:a:1"]\n'


def run(args: list[str], env: dict[str, str | None] | None = None) -> tuple[int, str]:
    """As tests/client/test_cli.py's run, with WSTUN_CONFIG and WSTUN_PROFILE unset
    unless a test sets them."""
    environment: dict[str, str | None] = {"WSTUN_CONFIG": None, "WSTUN_PROFILE": None}
    result = CliRunner().invoke(main, args, env={**environment, **(env or {})})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


@dataclasses.dataclass(frozen=True)
class Case:
    """Files in tmp_path (``{dir}`` in them, args, env and the output is that folder;
    braces are doubled, as for str.format),
    the arguments, and what the user sees."""

    id: str
    files: dict[str, str]
    args: list[str]
    code: int
    shows: list[str]
    hides: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    modes: dict[str, int] = dataclasses.field(default_factory=dict)


# The token file every EXAMPLE run reads, in the HOME the runs are given.
HOME_TOKEN = {"home/.config/wstun/token": "t0ken\n"}
HOME = {"HOME": "{dir}/home"}

CASES = [
    Case(
        "good file",
        {"c.toml": EXAMPLE, **HOME_TOKEN},
        ["--config", "{dir}/c.toml"],
        0,
        [
            "server: wss://tunnel.example.com/tunnel",
            "forward: 127.0.0.1:5432 -> staging-db.internal:5432",
            "socks5: 127.0.0.1:1080",
            "reverse: 127.0.0.1:9001 on the server -> 127.0.0.1:3000",
            "token: set",
            "pool: 5 idle WebSockets",
            "\n\nconfig file: {dir}/c.toml\n",
            "from: config = command line",
            "from: url = {dir}/c.toml:1",
            "from: token_file = {dir}/c.toml:2",
            "from: local = {dir}/c.toml:3",
            "from: dynamic = {dir}/c.toml:4",
            "from: remote = {dir}/c.toml:5",
            "from: pool = {dir}/c.toml:6",
        ],
        ["prod-db", "warning"],
        env=HOME,
        modes={"home/.config/wstun/token": 0o600},
    ),
    Case(
        "profile replaces keys, list and all",
        {"c.toml": EXAMPLE, **HOME_TOKEN},
        ["--config", "{dir}/c.toml", "--profile", "prod"],
        0,
        [
            "server: wss://tunnel.prod.example.com/tunnel",
            "forward: 127.0.0.1:15432 -> prod-db.internal:5432",
            "socks5: 127.0.0.1:1080",
            "config file: {dir}/c.toml, profile prod",
            "from: profile = command line",
            "from: url = {dir}/c.toml:9",
            "from: local = {dir}/c.toml:10",
            "from: dynamic = {dir}/c.toml:4",
        ],
        ["staging-db"],
        env=HOME,
    ),
    Case(
        "file and profile from the environment",
        {"c.toml": EXAMPLE, **HOME_TOKEN},
        [],
        0,
        [
            "server: ws://127.0.0.1:8080/",
            "from: config = environment (WSTUN_CONFIG)",
            "from: profile = environment (WSTUN_PROFILE)",
            "from: url = {dir}/c.toml:13",
        ],
        env={**HOME, "WSTUN_CONFIG": "{dir}/c.toml", "WSTUN_PROFILE": "dev"},
    ),
    Case(
        "a flag overrides the file",
        {"c.toml": EXAMPLE, **HOME_TOKEN},
        ["--config", "{dir}/c.toml", "--pool", "0", "--profile", "prod"],
        0,
        ["pool: off", "from: pool = command line", "from: url = {dir}/c.toml:9"],
        env=HOME,
    ),
    Case(
        "the environment sits between the file and the command line",
        {"c.toml": EXAMPLE, **HOME_TOKEN},
        ["--config", "{dir}/c.toml", "--ping-interval", "7"],
        0,
        [
            "pool: 3 idle WebSockets",
            "from: pool = environment (WSTUN_POOL)",
            "from: ping_interval = command line",
        ],
        env={**HOME, "WSTUN_POOL": "3", "WSTUN_PING_INTERVAL": "9"},
    ),
    Case(
        "a list on the command line replaces the file's",
        {"c.toml": EXAMPLE, **HOME_TOKEN},
        ["--config", "{dir}/c.toml", "-L", "7:x:7", "-L", "8:y:8"],
        0,
        [
            "forward: 127.0.0.1:7 -> x:7\nforward: 127.0.0.1:8 -> y:8\nreverse:",
            "from: local = command line",
            "socks5: 127.0.0.1:1080",
        ],
        ["staging-db"],
        env=HOME,
    ),
    Case(
        "one string for a repeatable option, numbers for ports",
        {"c.toml": 'url = "ws://h/"\nlocal = "1:a:1"\ndynamic = [1080, "[::1]:1081"]\n'},
        ["--config", "{dir}/c.toml"],
        0,
        ["forward: 127.0.0.1:1 -> a:1", "socks5: 127.0.0.1:1080", "socks5: [::1]:1081"],
    ),
    Case(
        "-W on the command line sets the file's forwards aside",
        {"c.toml": SIMPLE + 'log_level = "error"\n'},
        ["--config", "{dir}/c.toml", "-W", "db:22", "-v"],
        0,
        [
            "stdio: db:22",
            "from: local = {dir}/c.toml:2 (not used: stdio = command line wins)",
            "from: log_level = {dir}/c.toml:3 (not used: verbose = command line wins)",
        ],
        ["forward:"],
    ),
    Case(
        "--cacert on the command line sets the file's insecure aside",
        {"c.toml": 'url = "wss://h/"\nlocal = ["1:a:1"]\ninsecure = true\n', "ca.pem": "x\n"},
        ["--config", "{dir}/c.toml", "--cacert", "{dir}/ca.pem"],
        0,
        [
            "tls verification: on, CAs from {dir}/ca.pem",
            "from: insecure = {dir}/c.toml:3 (not used: cacert = command line wins)",
        ],
    ),
    Case(
        "~ and relative paths",
        {
            "conf/c.toml": 'url = "wss://h/"\nlocal = ["1:a:1"]\ntoken_file = "~/tok"\n'
            'cacert = "certs/ca.pem"\ndynamic = ["1080"]\nsocks_user = "alice"\n'
            'socks_password_file = "../pw"\n',
            "home/tok": "t0ken\n",
            "conf/certs/ca.pem": "not parsed by --check\n",
            "pw": "sesame\n",
        },
        ["--config", "{dir}/conf/c.toml"],
        0,
        [
            "token: set",
            "tls verification: on, CAs from {dir}/conf/certs/ca.pem",
            "socks5: 127.0.0.1:1080 (username/password)",
            "from: token_file = {dir}/conf/c.toml:3",
        ],
        ["warning"],
        env=HOME,
        modes={"home/tok": 0o600, "pw": 0o600},
    ),
    Case(
        "a token file readable by others gets a warning",
        {"c.toml": SIMPLE + 'token_file = "tok"\n', "tok": "t0ken\n"},
        ["--config", "{dir}/c.toml"],
        0,
        [
            "warning: {dir}/tok is readable by others (mode 0644); "
            "make it private: chmod 600 {dir}/tok",
            "token: set",
        ],
        modes={"tok": 0o644},
    ),
    Case(
        "a SOCKS password file readable by others too",
        {
            "c.toml": 'url = "ws://h/"\ndynamic = ["1080"]\nsocks_user = "a"\n'
            'socks_password_file = "pw"\n',
            "pw": "sesame\n",
        },
        ["--config", "{dir}/c.toml"],
        0,
        ["warning: {dir}/pw is readable by others (mode 0604)"],
        modes={"pw": 0o604},
    ),
    Case(
        "unknown key, with the closest known one",
        {"c.toml": SIMPLE + "\n[profiles.p]\nping_intervall = 5\n"},
        ["--config", "{dir}/c.toml", "--profile", "p"],
        2,
        [
            "Error: {dir}/c.toml:5: unknown key 'ping_intervall' in [profiles.p]; "
            "did you mean 'ping_interval'?"
        ],
    ),
    Case(
        "a parameter's own name suggests the key",
        {"c.toml": 'url = "ws://h/"\nforwards = ["1:a:1"]\n'},
        ["--config", "{dir}/c.toml"],
        2,
        ["Error: {dir}/c.toml:2: unknown key 'forwards'; did you mean 'local'?"],
    ),
    Case(
        "wrong type: a string where a number goes",
        {"c.toml": SIMPLE + 'pool = "two"\n'},
        ["--config", "{dir}/c.toml"],
        2,
        ["Error: Invalid value for 'pool' in {dir}/c.toml:3: 'two' is not a valid integer"],
    ),
    Case(
        "wrong type: a table where a string goes",
        {"c.toml": 'local = ["1:a:1"]\nurl = {{ host = "h" }}\n'},
        ["--config", "{dir}/c.toml"],
        2,
        ["Error: Invalid value for 'url' in {dir}/c.toml:2: expected a string, got a table"],
    ),
    Case(
        "wrong type: a number where true or false goes",
        {"c.toml": 'url = "wss://h/"\nlocal = ["1:a:1"]\ninsecure = 1\n'},
        ["--config", "{dir}/c.toml"],
        2,
        ["Invalid value for 'insecure' in {dir}/c.toml:3: expected true or false, got an integer"],
    ),
    Case(
        "a bad forward, in a list over several lines",
        {"c.toml": 'url = "ws://h/"\n\nlocal = [\n  "1:a:1",\n  "5432:db",\n]\n'},
        ["--config", "{dir}/c.toml"],
        2,
        [
            "Error: Invalid value for 'local' in {dir}/c.toml:3: "
            "expected [BIND:]PORT:HOST:HOSTPORT, got '5432:db'"
        ],
    ),
    Case(
        "a table that should be a profile",
        {"c.toml": SIMPLE + '\n[prod]\nurl = "ws://p/"\n'},
        ["--config", "{dir}/c.toml"],
        2,
        ["Error: {dir}/c.toml:4: unexpected table [prod]; profiles go in [profiles.prod]"],
    ),
    Case(
        "TOML syntax error",
        {"c.toml": SIMPLE + "pool = \n"},
        ["--config", "{dir}/c.toml"],
        2,
        ["Error: {dir}/c.toml: not valid TOML: Invalid value (at line 3, column 8)"],
    ),
    Case(
        "a token in the file is refused",
        {"c.toml": SIMPLE + 'token = "hunter2"\n'},
        ["--config", "{dir}/c.toml"],
        2,
        [
            "Error: {dir}/c.toml:3: 'token' is refused: tokens don't go in the config file, "
            'they live in files of their own: token_file = "..." (chmod 600)'
        ],
        ["hunter2"],
    ),
    Case(
        "a password in a profile is refused",
        {"c.toml": SIMPLE + '[profiles.p]\nsocks_password = "hunter2"\n'},
        ["--config", "{dir}/c.toml", "--profile", "p"],
        2,
        ["{dir}/c.toml:4: 'socks_password' is refused", 'socks_password_file = "..."'],
        ["hunter2"],
    ),
    Case(
        "options for the command line only",
        {"c.toml": SIMPLE + 'profile = "prod"\n'},
        ["--config", "{dir}/c.toml"],
        2,
        ["Error: {dir}/c.toml:3: 'profile' goes on the command line, not in the config file"],
    ),
    Case(
        "unknown profile",
        {"c.toml": EXAMPLE},
        ["--config", "{dir}/c.toml", "--profile", "staging"],
        2,
        ["Error: {dir}/c.toml: no profile 'staging'; the file's profiles: dev, prod"],
    ),
    Case(
        "--profile without a config file",
        {},
        ["--profile", "prod", "-L", "1:a:1", "ws://h/"],
        2,
        ["Error: --profile needs a config file: give --config FILE or set WSTUN_CONFIG"],
    ),
    Case(
        "a missing config file",
        {},
        ["--config", "{dir}/nowhere.toml"],
        2,
        ["Error: Invalid value for '--config': File '{dir}/nowhere.toml' does not exist."],
    ),
    Case(
        "WSTUN_CONFIG naming a missing file",
        {},
        ["-L", "1:a:1", "ws://h/"],
        2,
        ["Invalid value for WSTUN_CONFIG (from the environment): File '{dir}/gone.toml'"],
        env={"WSTUN_CONFIG": "{dir}/gone.toml"},
    ),
    Case(
        "a config file that isn't text",
        {"c.toml": "\udcff"},
        ["--config", "{dir}/c.toml", "--profile", "p"],
        2,
        ["Error: Invalid value for '--config': can't read {dir}/c.toml: not UTF-8 text"],
    ),
    Case(
        "no URL anywhere",
        {"c.toml": 'local = ["1:a:1"]\n'},
        ["--config", "{dir}/c.toml"],
        2,
        [
            "Error: Missing argument 'URL'. Give it on the command line (or as WSTUN_URL), "
            'or as url = "wss://..." in the --config file.'
        ],
    ),
    Case(
        "a bad value in the file is an error even when the command line overrides it",
        {"c.toml": SIMPLE + "ping_interval = -1\n"},
        ["--config", "{dir}/c.toml", "--ping-interval", "5"],
        2,
        ["Invalid value for 'ping_interval' in {dir}/c.toml:3: -1.0 is not in the range x>=0."],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_config_file(tmp_path: Path, case: Case) -> None:
    """Each file, run with --check, exits and reads as a user would expect."""
    for name, text in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.format(dir=tmp_path).encode("utf-8", "surrogateescape"))
        path.chmod(case.modes.get(name, 0o644))
    args = ["--check", *(arg.format(dir=tmp_path) for arg in case.args)]
    env = {name: value.format(dir=tmp_path) for name, value in case.env.items()}

    code, out = run(args, env)

    assert code == case.code, out
    for text in case.shows:
        assert text.format(dir=tmp_path) in out, out
    for text in case.hides:
        assert text.format(dir=tmp_path) not in out, out


def test_a_bad_forward_reads_as_on_the_command_line(tmp_path: Path) -> None:
    """The file's message is the command line's, with the key and its place as the name."""
    config = tmp_path / "c.toml"
    config.write_text('url = "ws://h/"\nlocal = ["16379:::1:6379"]\n')
    _, from_file = run(["--check", "--config", str(config)])
    _, from_flag = run(["--check", "-L", "16379:::1:6379", "ws://h/"])
    reason = from_flag.split("Invalid value for '-L' / '--local': ")[1]
    assert "IPv6 addresses need brackets" in reason
    assert f"Invalid value for 'local' in {config}:2: {reason}" in from_file


def test_no_config_file_shows_where_flags_came_from() -> None:
    """Without a file, --check still says which values came from where."""
    code, out = run(["--check", "-L", "1:a:1", "ws://h/"], env={"WSTUN_TOKEN": "x"})
    assert code == 0, out
    assert "from: local = command line" in out
    assert "from: token = environment (WSTUN_TOKEN)" in out
    assert "config file:" not in out


def test_help_explains_config_and_profile() -> None:
    code, out = run(["--help"])
    assert code == 0
    assert "--config FILE" in out
    assert "--profile NAME" in out
    assert "[profiles.NAME]" in out


@pytest.mark.parametrize(
    ("table", "key", "line"),
    [
        ((), "url", 2),
        ((), "pool", 3),
        (("profiles", "prod"), "url", 6),
        (("profiles", "my prod"), "local", 9),
        (("profiles", "my prod"), "pool", 8),
        (("profiles", "prod"), "nothing", 5),
        ((), "nothing", None),
    ],
)
def test_key_line(table: tuple[str, ...], key: str, line: int | None) -> None:
    """Keys are found within their table, dotted and quoted keys included."""
    text = (
        "# a comment\n"
        'url = "ws://h/"\n'
        "pool = 1\n"
        "\n"
        "[ profiles.prod ]  # the real one\n"
        'url = "ws://p/"\n'
        '[profiles."my prod"]\n'
        "'pool' = 2\n"
        'local = ["1:a:1"]\n'
    )
    assert key_line(text, table, key) == line


# -- wstun-client check reads the same file ----------------------------------------------


def test_check_refuses_a_bad_file_as_the_client_does(tmp_path: Path) -> None:
    """The whole file is checked, keys check has no use for included: the same exit
    status and message as the client's own."""
    config = tmp_path / "c.toml"
    for text, message in [
        ('url = "ws://h/"\nlcoal = ["1:a:1"]\n', "c.toml:2: unknown key 'lcoal'; did you mean"),
        ('url = "ws://h/"\nlocal = ["5432:db"]\n', "Invalid value for 'local' in"),
        ('url = "ws://h/"\ntoken = "x"\n', "'token' is refused: tokens don't go in the config"),
    ]:
        config.write_text(text)
        client_code, client_out = run(["--check", "--config", str(config)])
        check_code, check_out = run(["check", "--config", str(config)])
        assert (check_code, client_code) == (2, 2), check_out
        assert message in check_out, check_out
        assert client_out.splitlines()[-1] == check_out.splitlines()[-1]


def test_check_lets_the_command_line_win_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--insecure on the command line sets aside the file's cacert, as for the client:
    no usage error, the check runs (and fails at tcp: nothing listens on port 1)."""
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)  # keep pytest's logging
    (tmp_path / "ca.pem").write_text("not read: set aside\n")
    config = tmp_path / "c.toml"
    config.write_text('url = "wss://127.0.0.1:1/"\ncacert = "ca.pem"\nproxy = "none"\n')
    code, out = run(["check", "--config", str(config), "--insecure"])
    assert code == 1, out
    assert "verdict: FAIL at tcp: 127.0.0.1:1: connection refused" in out

    config.write_text('url = "wss://127.0.0.1:1/"\ncacert = "ca.pem"\ninsecure = true\n')
    code, out = run(["check", "--config", str(config)])
    assert code == 2, out  # both from the file: the usual error
    assert "--cacert and --insecure contradict each other" in out, out


def test_profiles_not_chosen_are_checked_too(tmp_path: Path) -> None:
    """A typo, a bad value or a secret in any profile is an error whichever profile is
    used; the files a profile names are looked for only when it is used."""
    config = tmp_path / "c.toml"
    for bad, message in [
        ('lcoal = ["1:a:1"]', "c.toml:4: unknown key 'lcoal' in [profiles.prod]; did you mean"),
        ('local = ["5432:db"]', "Invalid value for 'local' in"),
        ('token = "x"', "c.toml:4: 'token' is refused: tokens don't go in the config file"),
    ]:
        config.write_text(f"{SIMPLE}[profiles.prod]\n{bad}\n[profiles.dev]\npool = 1\n")
        for profile in ([], ["--profile", "dev"]):
            code, out = run(["--check", "--config", str(config), *profile])
            assert code == 2, out
            assert message in out, out

    config.write_text(f'{SIMPLE}[profiles.prod]\ncacert = "prod-ca.pem"\n')
    code, out = run(["--check", "--config", str(config)])
    assert code == 0, out
    code, out = run(["--check", "--config", str(config), "--profile", "prod"])
    assert code == 2, out
    assert "prod-ca.pem' does not exist" in out, out
