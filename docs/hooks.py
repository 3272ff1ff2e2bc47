"""MkDocs hooks for the documentation site (mkdocs.yml ``hooks:``); not a page of the site.

* ``bench/results.png`` (written by ``make bench``) joins the site as ``results.png``, where
  bench/RESULTS.md's ``![chart](results.png)`` finds it once performance.md includes that file.
* ``reference/cli.md`` is generated from the ``hyco`` argument parser, so the CLI reference is
  the ``--help`` text of the code being documented.
* Sphinx roles in docstrings (``:class:`Listener```), which Markdown shows as literal text,
  become plain code spans in the API reference, and a paragraph's closing ``::`` one colon.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "bench" / "results.png"

# A role rendered by Markdown: ``:class:`~a.b.C``` becomes ``:class:<code>~a.b.C</code>``.
ROLE = re.compile(
    r":(?:py:)?(?:mod|class|func|meth|attr|data|exc|obj|const):<code>(~?)([^<]*)</code>")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):  # "~a.b.C" shows only the last component, as in Sphinx
        target = target.rsplit(".", 1)[-1]
    return f"<code>{target}</code>"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _cli_page() -> str:
    from hyco_proto.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal width
    try:
        parser = build_parser()
        parser.prog = "hyco"
        parts = [
            "# CLI reference: `hyco`\n",
            "The `hyco` command (also `python -m hyco_proto`), installed with the package. "
            "This page is generated from its argument parser when the site is built; "
            "`hyco COMMAND --help` prints the same. The emulator's flags and configuration "
            "file are explained in [the emulator](../emulator.md).\n",
            "```text\n" + parser.format_help() + "```\n",
        ]
        for name, sub in _subcommands(parser).items():
            parts.append(f"## hyco {name}\n")
            parts.append("```text\n" + sub.format_help() + "```\n")
        return "\n".join(parts)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def on_files(files: Files, config: Any) -> Files:
    files.append(File(str(CHART.relative_to(ROOT / "bench")), src_dir=str(CHART.parent),
                      dest_dir=config["site_dir"], use_directory_urls=False))
    files.append(File.generated(config, "reference/cli.md", content=_cli_page()))
    return files


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    if not page.file.src_uri.startswith("reference/"):
        return html
    # reST's "text::" before a literal block reads "text:" (Markdown already made the block code).
    return ROLE.sub(_role, html).replace("::</p>", ":</p>")
