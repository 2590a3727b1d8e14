#!/usr/bin/env python3
"""Lists import circles between the files of each crate in the workspace.

A file imports another when it names a path into it: `use crate::a::b`, `crate::a::b::f()`,
`super::x`, `self::y`. A path is resolved to the deepest module that is a file of its own
(`a/b.rs`, `a/b/mod.rs`); `mod x;` declarations are not imports, and `#[cfg(test)]` test files
(`tests.rs` beside their module) are left out. Prints each strongly connected group of files
and exits 1 if there is one; `--quiet` prints only the count.

Usage: tools/import-cycles.py [CRATE_SRC_DIR ...]   (default: every crates/*/src)
"""

import re
import sys
from pathlib import Path

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
USE_RE = re.compile(r"\buse\s+((?:crate|super|self)::[^;]+);", re.S)


def module_of(src: Path, file: Path) -> tuple:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def expand_use(tree: str) -> list:
    """`crate::a::{b, c::d}` -> [`crate::a::b`, `crate::a::c::d`]."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, rest):
        if rest.startswith("{") and rest.endswith("}"):
            depth, start, items = 0, 1, []
            for i, ch in enumerate(rest):
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                elif ch == "," and depth == 1:
                    items.append(rest[start:i])
                    start = i + 1
            items.append(rest[start:-1])
            for item in items:
                if item:
                    walk(prefix, item)
            return
        head, sep, tail = rest.partition("::")
        if sep and (tail.startswith("{") or "::" in tail or tail):
            if tail.startswith("{"):
                walk(prefix + [head], tail)
            else:
                walk(prefix + [head], tail)
        else:
            out.append(prefix + [rest.split(" as ")[0]])

    walk([], tree)
    return out


def resolve(current: tuple, segments: list, modules: dict):
    head, rest = segments[0], segments[1:]
    if head == "crate":
        base = []
    elif head == "self":
        base = list(current)
    else:  # super, possibly repeated
        base = list(current)
        while head == "super":
            base = base[:-1]
            if not rest:
                break
            head, rest = rest[0], rest[1:]
        if head != "super":
            rest = [head] + rest
    path = base + [s for s in rest if s not in ("self", "*")]
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in modules:
            return tuple(path[:n])
    return None


def crate_graph(src: Path) -> dict:
    modules = {}
    for file in sorted(src.rglob("*.rs")):
        if file.name == "tests.rs":
            continue
        modules[module_of(src, file)] = file
    edges = {m: set() for m in modules}
    for module, file in modules.items():
        text = file.read_text()
        text = re.sub(r"//[^\n]*", "", text)
        # a file's own `mod tests { ... }` block is test code: drop it from the scan
        text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests\s*\{", text)[0]
        paths = []
        for use in USE_RE.findall(text):
            paths.extend(expand_use(use))
        for m in PATH_RE.finditer(text):
            if m.group(2) == "::{":
                continue
            paths.append([m.group(1)] + m.group(2).split("::")[1:])
        for segments in paths:
            target = resolve(module, segments, modules)
            if target is not None and target != module and target != ():
                # importing an ancestor's item (lib.rs re-exports) counts only for real files
                edges[module].add(target)
    return modules, edges


def strongly_connected(edges: dict) -> list:
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quiet = "--quiet" in sys.argv
    root = Path(__file__).resolve().parent.parent
    dirs = [Path(a) for a in args] or sorted(root.glob("crates/*/src"))
    total = 0
    for src in dirs:
        modules, edges = crate_graph(src)
        for group in strongly_connected(edges):
            total += 1
            if not quiet:
                names = ", ".join(str(modules[m].relative_to(src)) for m in group)
                print(f"{src.parent.name}: {names}")
    print(f"{total} import circle(s)")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
