"""Every form of every command that README.md's "Command line" block documents is accepted.

The block is read with a small grammar: ``[x]`` optional, ``(a | b)`` one of, ``x...`` and
``[x]...`` repeatable, ``A|B`` inside a word one of several values, ``AE[@HOST]`` a word with
an optional part, and a top-level ``a | b`` alternatives after the command words they share
(``models list | verify`` is ``models list`` and ``models verify``; ``rag build DATA.csv |
FOLDER ...`` is ``rag build DATA.csv`` and ``rag build FOLDER ...``). From each documented
line come the forms that exercise every choice: everything given, nothing optional given,
each optional part left out on its own (so ``dicom-node [serve] --port N ...`` is tried
without ``serve``), each alternative and each listed value.

Each form goes through ``engine.cli.main`` as ``medvision`` dispatches it, with the command
functions replaced by recorders (no engine, server or app starts). ``dicom-node`` forms go
on through the node's own ``dicom_node.scp.main`` (its ``serve``/``status`` recorded) and
must reach the node with what the same words give its parser after an explicit ``serve``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

#: Placeholders whose option converts its value (``type=int``/``float``) get a sample value.
SAMPLES = {"N": "11112", "S": "30", "X": "10", "Y": "20", "X1": "10", "Y1": "20", "X2": "30", "Y2": "40", "Z1": "1", "Z2": "3"}
_COMMAND_WORD = re.compile(r"^[a-z][a-z-]*$")


# -- reading the block ---------------------------------------------------------------------------
def command_lines(text: str) -> list[str]:
    """The documented command lines (a line starting with blanks continues the one before)."""
    block = re.search(r"## Command line\s*\n```[^\n]*\n(.*?)```", text, re.S)
    assert block, "README.md has no fenced block under '## Command line'"
    lines: list[str] = []
    for raw in block[1].splitlines():
        if not raw.strip():
            continue
        if raw[0].isspace():
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw.strip())
    return lines


@dataclass(frozen=True)
class Tok:
    kind: str  # word, value (quoted), "[", "]", "(", ")", "|", "..."
    text: str = ""


def tokenize(line: str) -> list[Tok]:
    tokens: list[Tok] = []
    i = 0
    while i < len(line):
        c = line[i]
        if c.isspace():
            i += 1
        elif c == '"':
            end = line.index('"', i + 1)
            tokens.append(Tok("value", line[i + 1:end]))
            i = end + 1
        elif c in "[]()":
            tokens.append(Tok(c))
            i += 1
        elif line.startswith("...", i) and tokens and tokens[-1].kind in ("]", ")") and not line[i - 1].isspace():
            tokens.append(Tok("..."))
            i += 3
        else:
            start = i
            while i < len(line) and not line[i].isspace() and line[i] not in "]()\"":
                i = line.index("]", i) + 1 if line[i] == "[" else i + 1  # AE[@HOST]: one word
            word = line[start:i]
            if word == "|":
                tokens.append(Tok("|"))
            elif word.endswith("...") and word != "...":
                tokens += [Tok("("), Tok("word", word[:-3]), Tok(")"), Tok("...")]
            else:
                tokens.append(Tok("word", word))
    return tokens


def split_alternatives(tokens: list[Tok]) -> list[list[Tok]]:
    """A top-level ``a | b`` as whole commands: each alternative after the command words it shares."""
    segments: list[list[Tok]] = [[]]
    depth = 0
    for tok in tokens:
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(tok.kind, 0)
        if tok.kind == "|" and depth == 0:
            segments.append([])
        else:
            segments[-1].append(tok)
    first = segments[0]
    # Where the command words of the first alternative sit: "models list", "dicom-node [serve]".
    starts: list[int] = []
    i = 0
    while i < len(first):
        if first[i].kind == "word" and _COMMAND_WORD.match(first[i].text):
            starts.append(i)
            i += 1
        elif (first[i].kind == "[" and i + 2 < len(first) and first[i + 1].kind == "word"
              and _COMMAND_WORD.match(first[i + 1].text) and first[i + 2].kind == "]"):
            starts.append(i)
            i += 3
        else:
            break
    forms = [first]
    for segment in segments[1:]:
        head = segment[0]
        sibling = head.kind == "word" and _COMMAND_WORD.match(head.text)
        shared = first[:starts[-1]] if sibling else first[:i]  # a sibling command, or other arguments
        forms.append(shared + segment)
    return forms


# -- the grammar ---------------------------------------------------------------------------------
@dataclass
class Node:
    kind: str  # seq, opt, alt, rep, word
    children: list[Node]
    variants: list[str] | None = None  # word: the words it may be
    ident: int = -1  # opt/alt/word with several variants: a choice point


def parse(tokens: list[Tok]) -> Node:
    pos = 0
    points = [0]

    def choice(node: Node) -> Node:
        node.ident = points[0]
        points[0] += 1
        return node

    def alternatives(close: str | None) -> Node:
        nonlocal pos
        options = [sequence(close)]
        while pos < len(tokens) and tokens[pos].kind == "|":
            pos += 1
            options.append(sequence(close))
        if close is not None:
            assert tokens[pos].kind == close, f"unbalanced {close} in README command line"
            pos += 1
        return options[0] if len(options) == 1 else choice(Node("alt", options))

    def sequence(close: str | None) -> Node:
        nonlocal pos
        items: list[Node] = []
        while pos < len(tokens) and tokens[pos].kind not in ("|", "]", ")"):
            tok = tokens[pos]
            pos += 1
            if tok.kind == "[":
                node = choice(Node("opt", [alternatives("]")]))
            elif tok.kind == "(":
                node = alternatives(")")
            else:
                node = word(tok)
            if pos < len(tokens) and tokens[pos].kind == "...":
                pos += 1
                node = Node("rep", [node])
            items.append(node)
        return Node("seq", items)

    def word(tok: Tok) -> Node:
        if tok.kind == "value":
            return Node("word", [], [tok.text])
        text = tok.text
        inner = re.fullmatch(r"([^\[]+)\[([^\]]+)\]", text)
        if inner:  # AE[@HOST]: AE or AE@HOST
            variants = [SAMPLES.get(inner[1], inner[1]), inner[1] + inner[2]]
        else:
            variants = [SAMPLES.get(v, v) for v in text.split("|")]  # --type CXR|KUB|...: each value
        node = Node("word", [], variants)
        return choice(node) if len(variants) > 1 else node

    return alternatives(None)


def points_of(node: Node) -> list[Node]:
    found = [node] if node.ident >= 0 else []
    for child in node.children:
        found += points_of(child)
    return found


def render(node: Node, pick: dict[int, int]) -> list[str]:
    """The words of one form; ``pick`` says, per choice point, which variant (an optional: 0 given, 1 not)."""
    if node.kind == "word":
        return [node.variants[pick.get(node.ident, 0)]]
    if node.kind == "seq":
        return [w for child in node.children for w in render(child, pick)]
    if node.kind == "opt":
        return [] if pick.get(node.ident, 0) else render(node.children[0], pick)
    if node.kind == "alt":
        return render(node.children[pick.get(node.ident, 0)], pick)
    return render(node.children[0], pick) * 2  # rep: given twice


def forms_of(tree: Node) -> list[list[str]]:
    """Everything given; nothing optional; each optional left out alone; each alternative and value."""
    points = points_of(tree)
    picks: list[dict[int, int]] = [{}, {p.ident: 1 for p in points if p.kind == "opt"}]
    for point in points:
        count = 2 if point.kind == "opt" else len(point.children if point.kind == "alt" else point.variants)
        picks += [{point.ident: index} for index in range(1, count)]
    forms: list[list[str]] = []
    for pick in picks:
        form = render(tree, pick)
        if form not in forms:
            forms.append(form)
    return forms


def documented_forms() -> list[list[str]]:
    forms: list[list[str]] = []
    for line in command_lines(README.read_text()):
        tokens = tokenize(line)
        assert tokens[0] == Tok("word", "medvision"), line
        for alternative in split_alternatives(tokens[1:]):
            for form in forms_of(parse(alternative)):
                if form not in forms:
                    forms.append(form)
    return forms


FORMS = documented_forms()


# -- the grammar itself ---------------------------------------------------------------------------
def test_the_reader_finds_every_documented_form() -> None:
    commands = {" ".join(f[:2]) if f[0] in ("rag", "models", "sessions", "pacs", "keys") else f[0] for f in FORMS}
    assert commands == {"analyze", "region", "segment", "volume", "roi", "segment-volume", "rag build", "rag search",
                        "annotations", "agent", "export",
                        "desktop", "mcp", "dicom-node", "models build", "models list", "models verify",
                        "models export-pack", "models import-pack", "models keygen", "sessions list",
                        "sessions show", "sessions delete", "sessions pin", "sessions unpin", "sessions purge", "audit",
                        "pacs echo", "pacs find", "pacs get", "pacs move", "pacs store", "pacs priors", "compare",
                        "keys rotate", "backup", "restore"}
    node = [f for f in FORMS if f[0] == "dicom-node"]
    assert ["dicom-node", "status"] in node
    assert any(f[1] == "serve" for f in node) and any(f[1:3] == ["--config", "FILE"] for f in node)
    assert ["dicom-node"] in node  # every optional part left out
    assert any(f.count("--allow") == 2 and "AE@HOST" in f for f in node)
    assert {p for f in node for p in f if p in ("keep_first", "keep_newest", "refuse")} == {
        "keep_first", "keep_newest", "refuse"}
    region = [f for f in FORMS if f[0] == "region"]
    assert {next(w for w in f if w in ("--bbox", "--point", "--polygon")) for f in region} == {
        "--bbox", "--point", "--polygon"}
    assert ["rag", "build", "DATA.csv"] in FORMS
    assert ["rag", "build", "FOLDER", "--reports", "REPORTS.csv", "--rebuild"] in FORMS
    assert ["models", "build", "--weights-dir", "DIR", "--out", "DIR", "--calibration", "DIR", "--if-stale",
            "--only", "FAMILY"] in FORMS
    assert ["segment", "FILE", "--point", "10", "20", "--point", "10", "20", "--bg", "10", "20", "--bg", "10", "20",
            "--box", "10", "20", "30", "40"] in FORMS


# -- every form through the real dispatch --------------------------------------------------------
@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, argparse.Namespace]]:
    """Every ``cmd_*`` of the CLI (but the node's) and the node's serve/status record their arguments."""
    import dicom_node.scp as scp
    import engine.cli as cli

    calls: list[tuple[str, argparse.Namespace]] = []

    def recorder(name: str):  # noqa: ANN202
        def record(args: argparse.Namespace) -> int:
            calls.append((name, args))
            return 0
        return record

    for family in cli.FAMILIES:
        for name in dir(family):
            if name.startswith("cmd_") and name != "cmd_dicom_node":
                monkeypatch.setattr(family, name, recorder(name))
    monkeypatch.setattr(scp, "serve", recorder("node.serve"))
    monkeypatch.setattr(scp, "status", recorder("node.status"))
    monkeypatch.setattr(scp, "configure_logging", lambda level: None)
    return calls


@pytest.mark.parametrize("form", FORMS, ids=[" ".join(f) for f in FORMS])
def test_every_documented_form_is_accepted(form: list[str], recorded: list) -> None:
    from engine.cli import main

    assert main(list(form)) == 0
    assert len(recorded) == 1, recorded
    name, args = recorded[0]
    if form[0] == "dicom-node":
        from dicom_node.scp import build_parser as node_parser

        rest = form[1:]
        explicit = rest if rest[:1] in (["serve"], ["status"]) else ["serve", *rest]
        assert name == f"node.{explicit[0]}"
        assert vars(args) == vars(node_parser().parse_args(explicit))
    elif form[0] == "desktop":
        assert name == "cmd_desktop" and args.desktop_args == form[1:]
    else:
        assert args.command == form[0]


@pytest.mark.parametrize("argv", [["dicom-node", "--port", "28626", "--ae-title", "MV"],
                                  ["-v", "dicom-node", "--port", "28626", "-v"]])
def test_dicom_node_serve_is_optional(argv: list[str], recorded: list) -> None:
    from engine.cli import main

    assert main(argv) == 0
    (name, args), = recorded
    assert name == "node.serve" and args.port == 28626
    assert args.verbose == 2 if argv[0] == "-v" else args.ae_title == "MV"
