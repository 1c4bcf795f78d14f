"""Every command in docs/runbook.md works as written.

The runbook is followed under pressure, copied line by line into a root shell or a
normal one. So each command it shows — in a shell block, in a comment of one, or inline
in the text — is taken apart here and checked:

- the project's own commands parse with the real command-line parsers (a renamed
  subcommand or option fails here, not during an incident);
- every other program is one a Debian host has, or one the runbook tells how to install;
- a command that reads the service's files (configuration 0640 root:service, state
  0700 service:service, the backups), changes a unit or installs packages runs with sudo;
- units are the ones the packages install, and no placeholder is left undefined.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aeamc.agent.cli import build_parser as agent_parser
from aeamc.coordinator.cli import build_parser as coordinator_parser
from aeamc.shared.cli import build_parser as tool_parser

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"
UNITS = {p.stem for p in (ROOT / "packaging" / "systemd").glob("*.service")}

PARSERS = {
    "aeamc-coordinator": coordinator_parser,
    "aeamc-agent": agent_parser,
    "aeamc": tool_parser,
}
#: Programs every Debian host has (essential, required or standard packages).
BASE = {
    "apt", "apt-get", "cut", "date", "df", "find", "free", "head", "install", "journalctl",
    "ls", "printf", "rm", "service", "sha256sum", "sudo", "systemctl", "top",
}  # fmt: skip
#: Other programs, by the Debian package that has them: the runbook must say to install it.
EXTRA = {"curl": "curl", "jq": "jq", "iostat": "sysstat", "sqlite3": "sqlite3"}
#: The service's private files: reading anything inside needs root or the service user.
PRIVATE = ("/var/lib/microblock-coordinator", "/var/lib/aeamc-agent", "/var/backups/aeamc")
CONFFILES = ("/etc/aeamc/coordinator.toml", "/etc/aeamc/agent.toml")
SERVICE_USERS = {"microblock-coordinator", "aeamc-agent"}
#: What the runbook's placeholders stand for, to parse a command as it will be typed.
PLACEHOLDERS = {
    "<version>": "1.4.0",
    "<previous-version>": "1.3.2",
    "<arch>": "arm64",
    "<device_id>": "0f" * 16,
    "<rpc_url>": "https://rpc.lan.example",
    "<request_id>": "task-3f9a0c1d2e4b5a6978c0d1e2",
}


@dataclass(frozen=True)
class Command:
    """One simple command (no pipes), as the runbook shows it, with its privilege."""

    line: str  # where it came from, for the failure message
    argv: tuple[str, ...]  # without sudo and without variable assignments
    sudo: str | None  # None, "root", or the user of `sudo -u`


# -- taking the runbook apart -----------------------------------------------------------------


def _shell_lines(markdown: str) -> Iterator[str]:
    """Each command line a reader can copy: shell blocks (continuations joined, commands
    shown in comments included) and inline code that starts with a program."""
    fence = False
    block: list[str] = []
    prose: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("```"):
            if fence:
                yield from _block_commands("\n".join(block))
                block = []
            fence = not fence
            continue
        (block if fence else prose).append(line)
    for raw in re.findall(r"`([^`]+)`", "\n".join(prose)):
        span = " ".join(raw.split())
        if span.split()[0] in {*PARSERS, *BASE, *EXTRA} and " " in span:
            yield span


def _block_commands(block: str) -> Iterator[str]:
    for line in block.replace("\\\n", " ").splitlines():
        code, _, comment = _split_comment(line)
        if code.strip():
            yield code.strip()
        # "# or, from a repository:" is prose; "# an older .deb: sudo apt …" shows a command.
        shown = comment.split(": ", 1)[-1].strip()
        if shown.split(" ", 1)[0] in {*PARSERS, *BASE, *EXTRA} and " " in shown:
            yield shown


def _split_comment(line: str) -> tuple[str, str, str]:
    """``line`` split at its first ``#`` that starts a comment (unquoted, at a word start)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], "#", line[i + 1 :]
    return line, "", ""


def _simple_commands(line: str) -> Iterator[tuple[str, ...]]:
    """The simple commands of a shell line: split at pipes, ``&&``, ``;`` and out of
    ``$(…)`` substitutions (each substitution is a command of its own)."""
    for inner in re.findall(r"\$\(([^()]*)\)", line):
        yield from _simple_commands(inner)
    flat = re.sub(r"\$\([^()]*\)", "SUBSTITUTED", line)
    for key, value in PLACEHOLDERS.items():
        flat = flat.replace(key, value)
    lexer = shlex.shlex(flat, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    for token in lexer:
        if token in {"|", "||", "&&", ";", "&"}:
            if words:
                yield tuple(words)
            words = []
        else:
            words.append(token)
    if words:
        yield tuple(words)


def commands(markdown: str) -> list[Command]:
    out = []
    for line in _shell_lines(markdown):
        for words in _simple_commands(line):
            argv = list(words)
            while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # RID=… before a command
                argv.pop(0)
            sudo = None
            if argv[:1] == ["sudo"]:
                argv.pop(0)
                sudo = "root"
                if argv[:1] == ["-u"]:
                    sudo = argv[1]
                    del argv[:2]
            if argv:
                out.append(Command(line, tuple(argv), sudo))
    return out


# -- the rules --------------------------------------------------------------------------------


def _inside_private(argv: tuple[str, ...]) -> list[str]:
    """The arguments that name something inside a private directory (or list one)."""
    lists_dir = argv[0] in {"find", "du"} or (
        argv[0] == "ls"
        and not any(a.startswith("-") and "d" in a for a in argv[1:] if not a.startswith("--"))
    )
    found = []
    for arg in argv[1:]:
        path = arg.split("'")[-2] if "'" in arg else arg  # sqlite3's ".backup '/path'"
        for private in PRIVATE:
            inside = path.startswith(private + "/") and path.rstrip("/") != private
            if inside or (lists_dir and path.rstrip("/") == private):
                found.append(arg)
        if path in CONFFILES or (argv[0] in PARSERS and path.startswith("/etc/aeamc/")):
            found.append(arg)
    return found


def problems(cmd: Command) -> list[str]:
    """What is wrong with one command, in words an operator would understand."""
    program, args = cmd.argv[0], list(cmd.argv[1:])
    found = []
    if any(ch in " ".join(cmd.argv) for ch in "…<>"):
        found.append("a placeholder is left in it (… or an undefined <name>)")
    if program not in {*PARSERS, *BASE, *EXTRA}:
        found.append(f"{program}: not a program the host has or the runbook installs")
    if program in PARSERS:
        parser = PARSERS[program]()
        try:
            parser.parse_args(args)
        except SystemExit:
            found.append(f"{program} does not accept: {shlex.join(args)}")
        reads_config = "--version" not in args and "--help" not in args
        if reads_config and cmd.sudo is None:
            found.append("reads the configuration (0640) and state (0700): needs sudo")
    private = _inside_private(cmd.argv)
    if private and cmd.sudo not in {"root", *SERVICE_USERS}:
        found.append(f"reads {', '.join(private)}: needs sudo")
    changes_unit = (program == "systemctl" and args[:1] != ["status"] and args[:1] != ["show"]) or (
        program == "service" and args[1:2] != ["status"]
    )
    if (changes_unit or program in {"apt", "apt-get", "rm", "install"}) and cmd.sudo != "root":
        found.append("changes the system: needs sudo")
    if program == "journalctl" and cmd.sudo != "root":
        found.append("reads the system journal: needs sudo")
    unit = (
        args[-1]
        if program == "systemctl"
        else args[0]
        if program == "service"
        else args[args.index("-u") + 1]
        if program == "journalctl" and "-u" in args
        else None
    )
    if unit is not None and unit.removesuffix(".service") not in UNITS:
        found.append(f"{unit}: no package installs this unit")
    return found


# -- tests ------------------------------------------------------------------------------------


def test_the_runbook_shows_enough_commands_to_check() -> None:
    found = commands(RUNBOOK.read_text())
    programs = {c.argv[0] for c in found}
    assert len(found) >= 30
    assert {"aeamc-coordinator", "journalctl", "systemctl", "apt", "curl"} <= programs
    coordinator = [c for c in found if c.argv[0] == "aeamc-coordinator"]
    assert {c.argv[3] for c in coordinator if len(c.argv) > 3} >= {"status", "chain", "release"}


@pytest.mark.parametrize(
    "cmd", commands(RUNBOOK.read_text()), ids=lambda c: shlex.join((c.sudo or "-", *c.argv))[:60]
)
def test_every_runbook_command_works_as_written(cmd: Command) -> None:
    assert problems(cmd) == [], cmd.line


def test_tools_the_runbook_uses_are_ones_it_tells_how_to_install() -> None:
    text = RUNBOOK.read_text()
    used = {c.argv[0] for c in commands(text)} & set(EXTRA)
    installed = {
        package
        for c in commands(text)
        if c.sudo == "root" and c.argv[:2] in {("apt", "install"), ("apt-get", "install")}
        for package in c.argv[2:]
    }
    assert {EXTRA[p] for p in used} <= installed


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("aeamc-coordinator --config /etc/aeamc/coordinator.toml chain status", "needs sudo"),
        ("sudo aeamc-coordinator --config /etc/aeamc/coordinator.toml chains status", "accept"),
        ("sudo aeamc-coordinator release halt", "accept"),
        ("ls -lh /var/lib/microblock-coordinator/", "needs sudo"),
        ("curl -s --cacert /var/lib/microblock-coordinator/ca/ca.pem https://x/v1/health", "sudo"),
        ("find /var/backups/aeamc -name 'x' -delete", "needs sudo"),
        ("systemctl restart microblock-coordinator", "needs sudo"),
        ("sudo -u microblock-coordinator systemctl restart microblock-coordinator", "needs sudo"),
        ("sudo service microblock-coordinators restart", "no package installs"),
        ("journalctl -u microblock-coordinator -p err", "journal"),
        ("apt install --allow-downgrades ./x.deb", "needs sudo"),
        ("sudo -u microblock-coordinator litecli /var/lib/microblock-coordinator/c.db", "program"),
        ("sudo aeamc-coordinator devices forget <device-id> --yes", "placeholder"),
        ("curl -s --cacert …/ca.pem https://coordinator.lan:8443/metrics", "placeholder"),
    ],
)
def test_the_check_catches_what_an_operator_would_trip_on(line: str, complaint: str) -> None:
    """Each rule fails on a command that breaks it (so the runbook's passing means something)."""
    found = commands(f"```sh\n{line}\n```\n")
    assert found, line
    assert any(complaint in p for c in found for p in problems(c)), [problems(c) for c in found]


def test_commands_are_found_in_text_comments_and_continuations() -> None:
    sample = (
        "Check it: `sudo systemctl status microblock-coordinator`, then `free -h`.\n\n"
        "```sh\nsudo apt install \\\n  ./a.deb   # now\n"
        "# an older one: sudo apt install --allow-downgrades ./b.deb\n```\n"
    )
    argvs = [c.argv for c in commands(sample)]
    assert ("apt", "install", "./a.deb") in argvs
    assert ("apt", "install", "--allow-downgrades", "./b.deb") in argvs
    assert ("systemctl", "status", "microblock-coordinator") in argvs
    assert ("free", "-h") in argvs
