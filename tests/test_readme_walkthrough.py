"""The README's local walkthrough, run as written: every ``$ command`` of its ``console`` blocks, in order, from the
checkout, on the project's `.venv`, each ending with the output the README shows.

A block after a paragraph saying "another terminal" (serve-local, the callback receiver) starts its command in the
background; it is ready when its first shown line appears, and what it shows is checked once the walkthrough has run
and it was stopped (SIGTERM, as Ctrl-C would), in any order (its lines come from concurrent queues).

Every wait is for an event (a command's exit, a line printed), so a loaded machine only makes the test slower: each
wait has a last-resort guard of `GUARD_SECONDS` against a hung command, which a run that works never reaches.

How a block is read: the lines after a command are its output. They must appear in that order among the lines it
printed (stdout; a line not there may be anywhere in stderr, e.g. a progress line); printed lines the README leaves
out are skipped. ``…`` stands for any text (a line of only ``…`` says lines were left out); times, durations and a
callback's age are compared as their shape. ``(exit N)`` is the exit code expected (otherwise 0).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## The local walkthrough"
PORTS = (7071, 8765)  # serve-local's default port, and the callback receiver's (examples/ticket-with-callback.json)
#: A last-resort guard (wall seconds) for each wait; the test decides on the event waited for, never on this.
GUARD_SECONDS = 600.0

_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")
_SECONDS = re.compile(r"\b\d+(\.\d+)? s\b")


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0


@dataclass
class Block:
    commands: list[Command]
    background: bool


def walkthrough() -> list[Block]:
    """The console blocks of the README's local walkthrough, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    blocks: list[Block] = []
    previous_end = 0
    for match in re.finditer(r"```console\n(.*?)```", section, re.DOTALL):
        before = section[previous_end : match.start()]
        paragraph = before.strip().split("\n\n")[-1]
        previous_end = match.end()
        commands: list[Command] = []
        for line in match.group(1).splitlines():
            if line.startswith("$ "):
                commands.append(Command(line[2:]))
            elif (exit_code := re.fullmatch(r"\(exit (\d+)\)", line)) is not None:
                commands[-1].exit_code = int(exit_code.group(1))
            else:
                commands[-1].expected.append(line)
        blocks.append(Block(commands, background="another terminal" in paragraph))
    return blocks


def normalized(line: str) -> str:
    return _SECONDS.sub("<seconds> s", _TIME.sub("<time>", line)).rstrip()


def matches(expected: str, printed: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in normalized(expected).split("…"))
    return re.fullmatch(pattern, normalized(printed)) is not None


def missing_lines(expected: list[str], stdout: str, stderr: str, *, ordered: bool = True) -> list[str]:
    """The expected lines not printed (in order, among stdout's lines; or anywhere in stderr's)."""
    printed, errors = stdout.splitlines(), stderr.splitlines()
    missing, cursor = [], 0
    for line in (line for line in expected if line.strip() not in ("", "…")):
        at = next((i for i in range(cursor if ordered else 0, len(printed)) if matches(line, printed[i])), None)
        if at is not None:
            cursor = at + 1 if ordered else cursor
        elif not any(matches(line, error) for error in errors):
            missing.append(line)
    return missing


def environment(tmp_path: Path) -> dict[str, str]:
    """The shell's environment without the app's settings (the README assumes none), a fresh local namespace."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GRANTS_", "GRAPH_", "IDENTITY_", "MSI_", "HR_", "ServiceBus", "GrantsLedger"))
        and name not in ("AZURE_CLIENT_ID", "PYTEST_CURRENT_TEST")
    }
    return {**env, "GRANTS_LOCAL_NAMESPACE": str(tmp_path / "servicebus"), "PYTHONUNBUFFERED": "1"}


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Background:
    command: Command
    process: subprocess.Popen[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]

    def complete(self) -> bool:
        return not self.missing()

    def missing(self) -> list[str]:
        """The lines its block shows that it has not printed (yet), in any order."""
        return missing_lines(self.command.expected, *self.output(), ordered=False)

    def output(self) -> tuple[str, str]:
        self.stdout.seek(0)
        self.stderr.seek(0)
        return self.stdout.read().decode(errors="replace"), self.stderr.read().decode(errors="replace")


def start(command: Command, env: dict[str, str], tmp_path: Path, number: int) -> Background:
    """Start `command` in the background; return once its first shown line is printed (else fail)."""
    stdout = (tmp_path / f"background-{number}.out").open("w+b")
    stderr = (tmp_path / f"background-{number}.err").open("w+b")
    process = subprocess.Popen(  # noqa: S603 - the README's own command, run by bash as a reader would
        ["bash", "-c", f"exec {command.line}"],  # noqa: S607
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=stderr,
    )
    started = Background(command, process, stdout, stderr)
    first = next(line for line in command.expected if line.strip() not in ("", "…"))
    try:
        _wait_for(lambda: any(matches(first, line) for line in started.output()[0].splitlines()), process)
    except AssertionError:
        process.kill()
        raise
    return started


def _wait_for(ready: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    """Return once `ready()` is true; fail when `process` ends first (or, hung, after `GUARD_SECONDS`)."""
    deadline = time.monotonic() + GUARD_SECONDS
    while time.monotonic() < deadline:
        if ready():
            return
        assert process.poll() is None, f"the background command ended (exit {process.returncode})"
        time.sleep(0.1)
    raise AssertionError(f"not ready within the {GUARD_SECONDS:g} s guard")


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    busy = [port for port in PORTS if port_in_use(port)]
    if busy:
        pytest.skip(f"the walkthrough's ports are in use on this machine: {busy}")
    blocks = walkthrough()
    assert sum(len(block.commands) for block in blocks) >= 15
    env = environment(tmp_path)
    background: list[Background] = []
    try:
        for block in blocks:
            for command in block.commands:
                if block.background:
                    background.append(start(command, env, tmp_path, len(background)))
                    continue
                finished = subprocess.run(  # noqa: S603 (the README's own command)
                    ["bash", "-c", command.line],  # noqa: S607
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=GUARD_SECONDS,
                    check=False,
                )
                where = (
                    f"$ {command.line}\n--- stdout\n{finished.stdout[-4000:]}\n--- stderr\n{finished.stderr[-2000:]}"
                )
                assert finished.returncode == command.exit_code, where
                assert missing_lines(command.expected, finished.stdout, finished.stderr) == [], where
        for started in background:  # what it shows may come after the last command returned (a callback's retries)
            _wait_for(started.complete, started.process)
    finally:
        for started in background:
            started.process.send_signal(signal.SIGTERM)
        for started in background:
            try:
                started.process.wait(timeout=GUARD_SECONDS)
            except subprocess.TimeoutExpired:
                started.process.kill()
                started.process.wait()
    for started in background:
        stdout, stderr = started.output()
        where = f"$ {started.command.line}\n--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-2000:]}"
        assert started.missing() == [], where


def test_the_readme_stays_a_ten_minute_read() -> None:
    """At most 300 lines."""
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300


def test_every_docs_page_is_findable_from_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in text, f"docs/{page.name} is not linked from the README"


PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "client" / "README.md"]
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """`text` with its fenced code blocks blanked (kept as empty lines, so paragraphs stay apart)."""
    return _FENCE.sub(lambda block: "\n" * block.group(0).count("\n"), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: its rendered text lower-cased, punctuation dropped (letters, digits,
    ``_``, ``-`` and spaces kept), each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*\*|__|\*|(?<!\w)_|_(?!\w))", "", text)  # emphasis, not an underscore inside a word
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every section anchor of `page` as GitHub makes them: a heading's slug, ``-1``, ``-2``… for repeats."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for heading in re.findall(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", prose(page.read_text(encoding="utf-8")), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def unresolved(page: Path) -> list[str]:
    """The relative links of `page` whose file does not exist, or whose ``#fragment`` names no section there."""
    broken = []
    for target in _LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no section #{fragment} in {linked.relative_to(ROOT)}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_section_anchor_resolves(page: Path) -> None:
    assert unresolved(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_paragraph_is_said_twice_in_a_page(page: Path) -> None:
    """No two paragraphs (outside code blocks) are the same or open with the same sentence (an edited copy)."""
    text = prose(page.read_text(encoding="utf-8"))
    paragraphs = [" ".join(part.split()) for part in re.split(r"\n[ \t]*\n", text)]
    said = [paragraph for paragraph in paragraphs if len(paragraph) > 40]  # not a lone "…" or a short label
    openings = [re.split(r"(?<=[.:;!?])\s", paragraph, maxsplit=1)[0] for paragraph in said]
    openings = [opening for opening in openings if len(opening) > 40]
    assert [paragraph for paragraph in set(said) if said.count(paragraph) > 1] == []
    assert [opening for opening in set(openings) if openings.count(opening) > 1] == []


@pytest.mark.parametrize("page", [*PAGES[1:], ROOT / "shared" / "core" / "policy.py"], ids=lambda page: page.name)
def test_a_readme_section_named_in_words_exists(page: Path) -> None:
    """A page citing the README by a section's name ("README, Guardrails") names a section the README has."""
    text = page.read_text(encoding="utf-8")
    cited = re.findall(r"\bREADME(?:'s)?,?\s+\(?\"?([A-Z][\w -]*?)\"?(?=[,.;:)\n]|$)", text)
    assert [name for name in cited if slug(name) not in anchors(README)] == []


def test_section_anchors_follow_githubs_rules() -> None:
    """The slugs GitHub makes for headings of the kinds these pages use (checked against rendered pages)."""
    assert slug("After a deployment: `grants smoke`") == "after-a-deployment-grants-smoke"
    assert (
        slug("The fleet: K instances sharing Graph's write quota") == "the-fleet-k-instances-sharing-graphs-write-quota"
    )
    assert slug("2. Your own messages: `run-local`") == "2-your-own-messages-run-local"
    assert slug("Drift: removals held") == "drift-removals-held"
    assert slug("POST body with Content-Type: application/json, X-Grants-Timestamp: timestamp") == (
        "post-body-with-content-type-applicationjson-x-grants-timestamp-timestamp"
    )
    assert slug("max_delivery_count and *emphasis*") == "max_delivery_count-and-emphasis"
