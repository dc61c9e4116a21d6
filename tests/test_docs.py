"""Every command line the README and docs/ show parses with that command's own parser (parsing only:
nothing runs), so a renamed or removed flag breaks a test, not a reader's first try."""
import importlib
import re
import shlex

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)  # list items indent theirs
SPAN = re.compile(r"`([^`]+)`")
COMMAND = re.compile(r"-m apollogan\.(\w+)(.*)")
CUT = re.compile(r"\s(?:#|&&|\|\|?|;|2?>|<)(?:\s.*)?$")  # a comment, the next command, a pipe or a redirect ends it


def commands_in(text: str) -> list[tuple[int, str, str]]:
    """(offset, module, argument text) of every `-m apollogan.X ...`: a fenced block's lines (with their
    backslash continuations joined), and inline code spans (which may wrap across lines)."""
    found, fenced = [], []
    for block in FENCE.finditer(text):
        fenced.append(block.span())
        offset, joined = block.start(1), ""
        for line in block.group(1).splitlines(keepends=True):
            joined += line.rstrip("\n")
            if joined.endswith("\\"):  # continued on the next line
                joined = joined[:-1] + " "
            else:
                cmd = COMMAND.search(joined)
                if cmd:
                    found.append((offset, cmd.group(1), cmd.group(2)))
                joined = ""
            offset += len(line)
    prose = text
    for a, b in fenced:  # blanked, so that a fence's backticks do not pair with an inline span's
        prose = prose[:a] + "".join(c if c == "\n" else " " for c in prose[a:b]) + prose[b:]
    for span in SPAN.finditer(prose):
        cmd = COMMAND.search(span.group(1).replace("\n", " "))
        if cmd:
            found.append((span.start(), cmd.group(1), cmd.group(2)))
    return found


def documented_commands() -> list[tuple[str, str, str]]:
    """(where, module, argument text) for every command line in the docs; a usage synopsis
    (``[--flag X]``) and a bare command name are left out: they are not commands to run."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for offset, module, args in commands_in(text):
            args = CUT.sub("", args).strip()
            if not args or " [--" in f" {args}":  # a bare command name in prose, or a synopsis
                continue
            found.append((f"{doc.name}:{text.count(chr(10), 0, offset) + 1}", module, args))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_every_command():
    shown = {module for _, module, _ in COMMANDS}
    assert {"preprocess", "train", "generate", "evaluate", "decode", "describe", "ablate"} <= shown
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("where,module,args", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_documented_command_parses(where, module, args):
    parser = importlib.import_module(f"apollogan.{module}").build_parser()
    tokens = [t for t in shlex.split(args) if t not in ("...", "…")]

    def fail(message):
        raise AssertionError(f"{where}: python -m apollogan.{module} {args}\n  {message}")
    parser.error = fail
    parser.parse_args(tokens)


def test_a_removed_flag_is_caught():
    parser = importlib.import_module("apollogan.decode").build_parser()
    errors = []
    parser.error = errors.append
    parser.parse_args(["chunks/nottingham", "--out", "decoded", "--no-such-flag"])
    assert errors and "--no-such-flag" in errors[0]
