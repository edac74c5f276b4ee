"""Write docs/cli.md from the click definitions that ``galcae ... --help`` prints.

    python tools/cli_reference.py > docs/cli.md

``tests/test_docs.py`` checks that docs/cli.md is what this prints, so a changed option
cannot leave the reference behind.
"""

import inspect
import sys

import click

from galcae import __version__
from galcae.cli import cli

ORDER = ["simulate", "train", "evaluate", "infer", "fit", "demo"]
HEADER = f"""# Command-line reference

Every subcommand and option of `galcae` {__version__}, as `galcae --help` and
`galcae COMMAND --help` print them (the usage line, the description and the option
table are the help text itself, one row per option; only the layout is Markdown), written
by `python tools/cli_reference.py > docs/cli.md` from the click definitions that print
`--help`; `galcae COMMAND --help` is always authoritative.

How to use each command, with examples, is in the guides: [simulate](guide-simulate.md),
[train](guide-train.md), [evaluate and demo](guide-evaluate.md), [infer](guide-infer.md),
[fit](guide-fit.md).

Exit codes (all commands): 0 on success; 1 for bad input or a failed stage, with one
line on stderr naming the file, HDU, key or address; 2 for a malformed command line
(one line naming the command and its `--help`); 130 when interrupted (re-run the same
command to resume). See [guarantees](guarantees.md).
"""


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n")]


def options_table(cmd: click.Command, ctx: click.Context) -> list[str]:
    rows = ["| option | description |", "|---|---|"]
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or isinstance(param, click.Argument):
            continue
        opts, text = record
        rows.append(f"| `{cell(opts)}` | {cell(text) or ' '} |")
    return rows


def reference() -> str:
    assert sorted(ORDER) == sorted(cli.commands), sorted(cli.commands)
    root = click.Context(cli, info_name="galcae", **cli.context_settings)
    out = [HEADER, "Contents: " + ", ".join(f"[`galcae {c}`](#galcae-{c})" for c in ORDER) + ".", ""]
    out += ["## `galcae`", "", "```text", "galcae " + " ".join(cli.collect_usage_pieces(root)), "```", ""]
    out += [*paragraphs(cli.help), ""]
    out += options_table(cli, root) + [""]
    out += ["| command | summary |", "|---|---|"]
    out += [f"| [`{name}`](#galcae-{name}) | {cell(paragraphs(cli.commands[name].help)[0])} |" for name in ORDER]
    out.append("")
    for name in ORDER:
        cmd = cli.commands[name]
        ctx = click.Context(cmd, info_name=name, parent=root)
        out += [f"## `galcae {name}`", "", "```text",
                f"galcae {name} " + " ".join(cmd.collect_usage_pieces(ctx)), "```", ""]
        for para in paragraphs(cmd.help):
            out += [para, ""]
        out += options_table(cmd, ctx) + [""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
