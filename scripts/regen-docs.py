#!/usr/bin/env python3
"""Regenerates the tables in docs/ from the commands that make them.

A page marks each generated block with the command that writes it:

    <!-- regenerate: moeplace-lab experiment grace --data ../shared/data/esft-deepseek-v2-lite -->
    ...the command's standard output...
    <!-- end regenerate -->

`moeplace-lab` and `moeplace` run the release builds (MOEPLACE_LAB, MOEPLACE_BIN
override them); anything else runs as written, from the repository's root. Blocks
whose output moves with the machine (timings) are marked `regenerate-timed:` and run
only with --timed; they are never compared.

Usage:
    scripts/regen-docs.py            rewrite every block with its command's output
    scripts/regen-docs.py --check    rewrite nothing; print the differences and exit 1
                                     when a page is not what its commands print
    scripts/regen-docs.py --timed    also rerun the timed blocks (rewrites them)
    scripts/regen-docs.py PAGE...    only these pages

Build first: cargo build --release -p moeplace-cli -p moeplace-lab
"""

import difflib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(
    r"(<!-- (regenerate|regenerate-timed): (?P<cmd>.+?) -->\n)(?P<body>.*?)(<!-- end regenerate -->)", re.S
)


def resolve(cmd: str) -> list:
    argv = shlex.split(cmd)
    exe = {
        "moeplace-lab": os.environ.get("MOEPLACE_LAB", str(ROOT / "target/release/moeplace-lab")),
        "moeplace": os.environ.get("MOEPLACE_BIN", str(ROOT / "target/release/moeplace")),
    }
    if argv[0] in exe:
        argv[0] = exe[argv[0]]
    return argv


def run(cmd: str) -> str:
    print(f"  running: {cmd}", file=sys.stderr)
    done = subprocess.run(resolve(cmd), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{cmd}: exit {done.returncode}\n{done.stderr}")
    out = done.stdout
    return out if out.endswith("\n") else out + "\n"


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    check = "--check" in sys.argv
    timed = "--timed" in sys.argv
    pages = [ROOT / a for a in args] or sorted((ROOT / "docs").glob("*.md"))
    stale = 0
    for page in pages:
        text = page.read_text()
        if "<!-- regenerate" not in text:
            continue
        print(f"{page.relative_to(ROOT)}:", file=sys.stderr)
        cache = {}

        def fresh(m):
            nonlocal stale
            kind, cmd, body = m.group(2), m.group("cmd"), m.group("body")
            if kind == "regenerate-timed" and not timed:
                return m.group(0)
            if cmd not in cache:
                cache[cmd] = run(cmd)
            new = cache[cmd]
            if new != body and kind == "regenerate":
                stale += 1
                diff = difflib.unified_diff(
                    body.splitlines(), new.splitlines(), f"{page.name} (written)", f"{cmd} (now)", lineterm=""
                )
                print("\n".join(diff))
            return m.group(1) + new + m.group(5)

        updated = BLOCK.sub(fresh, text)
        if not check and updated != text:
            page.write_text(updated)
    if stale:
        print(f"{stale} block(s) differ from what their commands print now", file=sys.stderr)
        return 1 if check else 0
    print("every block is what its command prints", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
