"""The docs hold together: every relative link of README.md and docs/*.md (and every `#anchor` into a Markdown
heading, as GitHub spells them) leads somewhere, the README stays a short front door, and its one-minute tour runs
as written against the stack `make run` starts."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.processes import (
    ROOT,
    WEBHOOKS_TO_THE_GATEWAY,
    running_stack,
)

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 8192
TOUR_HEADING = "## A one-minute tour"
#: the base URLs the tour's commands and replies name: the gateway and the sandboxes as `make run` serves them
TOUR_GATEWAY = "http://localhost:8000"
TOUR_SANDBOX = "http://127.0.0.1:8001"
#: the README's steps of an update sent while the vendor is down, and the sandbox's address they name
OUTAGE_HEADING = "## An update while the vendor is down"
OUTAGE_SANDBOX = "http://localhost:8001"

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")


# --- links and anchors ---------------------------------------------------------------------------------------------

def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the Markdown outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def heading_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (links and code as their text) in lower case, everything but
    letters, digits, spaces, hyphens and underscores dropped, spaces as hyphens."""
    text = LINK.sub(lambda match: match["text"], heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match is None:
            continue
        slug = heading_slug(match["text"])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    """Each relative link of a Markdown file whose file or heading does not exist, as `line: target: why`."""
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{number}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{number}: {target}: no heading #{anchor} in {linked.name}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(path):
    assert broken_links(path) == []


def test_the_manual_is_linked_from_the_readme():
    linked = {match["target"].partition("#")[0] for _, line in prose_lines(README.read_text(encoding="utf-8"))
              for match in LINK.finditer(line)}
    assert {f"docs/{path.name}" for path in DOCS[1:]} <= linked


@pytest.mark.parametrize(("heading", "slug"), [
    ("## `PATCH /orders/<id>` — update one order", "patch-ordersid--update-one-order"),
    ("## Health: `/livez` and `/readyz`", "health-livez-and-readyz"),
    ("## The console: one page for an order's story", "the-console-one-page-for-an-orders-story"),
    ("### Rocket SellerCenter (`backend = \"sellercenter\"`)", "rocket-sellercenter-backend--sellercenter"),
    ("## See [the API](api.md) first", "see-the-api-first"),
])
def test_headings_get_githubs_anchors(heading, slug):
    assert heading_slug(HEADING.match(heading)["text"]) == slug


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md#a-section) [repeated](other.md#a-section-1) [here](#page)\n"
        "[gone](missing.md) [no heading](other.md#nowhere) [absolute](https://example.com/x.md)\n"
        "`[in code](missing-too.md)`\n\n```\n[fenced](missing-three.md)\n```\n", encoding="utf-8")
    assert broken_links(page) == ["4: missing.md: no such file", "4: other.md#nowhere: no heading #nowhere in other.md"]


def test_the_readme_is_a_short_front_door():
    assert len(README.read_bytes()) <= README_MAX_BYTES


# --- the one-minute tour ---------------------------------------------------------------------------------------------

def tour_steps(heading: str = TOUR_HEADING) -> list[tuple[str, str]]:
    """(shell commands, the reply they print) of each step of a section of the README (the tour by default): each
    fenced `sh` block under its heading, with the fenced `json` block after it."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    section = text[start:end if end != -1 else len(text)]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    steps = []
    for (language, body), (next_language, reply) in itertools.pairwise([*blocks, ("", "")]):
        if language == "sh":
            assert next_language == "json", f"the tour's step has no reply after it:\n{body}"
            steps.append((body, reply))
    return steps


def assert_shows(shown, actual, where: str = "reply") -> None:
    """`actual` has everything the abbreviated `shown` has: its members (others may be there too), its lists item by
    item, its values; a string with `…` stands for any text holding its other pieces in that order."""
    if isinstance(shown, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in shown.items():
            assert key in actual, f"{where}: no member {key!r} in {sorted(actual)}"
            assert_shows(value, actual[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list) and len(actual) == len(shown), f"{where}: {actual!r} is not {shown!r}"
        for index, (item, actual_item) in enumerate(zip(shown, actual, strict=True)):
            assert_shows(item, actual_item, f"{where}[{index}]")
    elif isinstance(shown, str) and "…" in shown:
        assert isinstance(actual, str), f"{where}: {actual!r} is not a string"
        position = 0
        for piece in shown.split("…"):
            found = actual.find(piece, position)
            assert found != -1, f"{where}: {piece!r} not in {actual[position:]!r}"
            position = found + len(piece)
    else:
        assert actual == shown and type(actual) is type(shown), f"{where}: {actual!r} is not {shown!r}"


@pytest.mark.parametrize(("shown", "actual"), [
    ({"a": 1}, {"a": 2}),
    ({"a": 1}, {"b": 1}),
    ({"a": "x…z"}, {"a": "zyx"}),
    ({"a": "…secret…"}, {"a": "no such thing"}),
    ([{"a": 1}], [{"a": 1}, {"a": 2}]),
    ({"a": None}, {"a": "null"}),
    ({"a": 1}, {"a": True}),
])
def test_a_reply_that_is_not_what_the_readme_shows_is_caught(shown, actual):
    with pytest.raises(AssertionError):
        assert_shows(shown, actual)


def test_an_abbreviated_reply_matches_the_full_one():
    assert_shows({"id": "evt_…", "list": [{"k": "v"}], "body": "<?xml …<b>2</b>…"},
                 {"id": "evt_123", "list": [{"k": "v", "more": 1}], "body": "<?xml x?><a>1</a><b>2</b>", "other": 3})


def test_the_tour_names_the_addresses_and_key_of_make_run():
    run_local = (ROOT / "scripts" / "run-local").read_text(encoding="utf-8")
    assert "GATEWAY_BIND=${GATEWAY_BIND:-127.0.0.1:8000}" in run_local
    assert "SANDBOX_BIND=${SANDBOX_BIND:-127.0.0.1:8001}" in run_local
    assert "GATEWAY_CONFIG=\"$${GATEWAY_CONFIG:-config/sandbox.toml}\"" in (ROOT / "Makefile").read_text()
    assert 'keys = ["${GATEWAY_DEMO_KEY:-demo-caller-key-0000}"]' in (ROOT / "config" / "sandbox.toml").read_text()
    steps = tour_steps()
    assert len(steps) >= 3
    for commands, _ in steps:
        assert "curl -sS --fail-with-body" in commands and TOUR_GATEWAY in commands
        assert "Bearer demo-caller-key-0000" in commands


def make_run_configuration(folder: Path) -> str:
    """config/sandbox.toml as `make run` reads it, its event databases moved into `folder`."""
    text = (ROOT / "config" / "sandbox.toml").read_text(encoding="utf-8")
    for name in ("events", "queue"):
        line = f'"../var/{name}.sqlite3"'
        assert line in text
        text = text.replace(line, f'"{folder / f"{name}.sqlite3"}"')
    path = folder / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def make_run_stack(tmp_path):
    """The sandboxes, the gateway and its event worker configured as scripts/run-local configures them (the
    sandbox's Ongoing webhooks aimed at the gateway); yields (gateway URL, sandbox URL)."""
    with running_stack(make_run_configuration(tmp_path), tmp_path, WEBHOOKS_TO_THE_GATEWAY) as urls:
        yield urls


@pytest.mark.parametrize("heading", [TOUR_HEADING, OUTAGE_HEADING])
def test_the_readme_tour_runs_as_written(make_run_stack, heading):
    gateway_url, sandbox_url = make_run_stack
    steps = tour_steps(heading)
    assert len(steps) >= 3
    for commands, reply in steps:
        commands = commands.replace(TOUR_GATEWAY, gateway_url).replace(OUTAGE_SANDBOX, sandbox_url)
        run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", commands],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert run.returncode == 0, f"{commands}\nexited {run.returncode}: {run.stderr}{run.stdout}"
        assert_shows(json.loads(reply.replace(TOUR_SANDBOX, sandbox_url)), json.loads(run.stdout),
                     commands.strip().splitlines()[-1])
