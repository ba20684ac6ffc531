#!/usr/bin/env python3
"""Lists the import cycles among the crate's top-level modules (issue 24).

A module is a file or folder directly under `src/` (`src/persist/lost.rs`
belongs to `persist`). Module `a` imports `b` when `a`'s code names
`crate::b` (a `use` line or a path): comments, doc comments and the test
module at the end of a file are not code and do not count. The cycles are
the strongly connected components of that graph with more than one module;
for each, the edges inside it and the files that make them.

Run from the repository's root:

    python3 scripts/layers.py

Exits 1 while a cycle remains, 0 when the imports run one way. It is not in
`.ci/run` yet: it would fail today (the core imports the persister; see the
issue). Once the cycles are gone, CI runs it so they stay gone.
"""

import os
import re
import sys
from collections import defaultdict

CRATE_PATH = re.compile(r"crate::([a-z_][a-z0-9_]*)")
TEST_MODULE = re.compile(r"#\[cfg\((?:all\()?test[^\]]*\]\s*(?:pub(?:\(crate\))? )?mod tests")


def module_of(path):
    """The top-level module a file under `src/` belongs to."""
    parts = os.path.relpath(path, "src")[: -len(".rs")].split(os.sep)
    return parts[0]


def code_of(text):
    """The file's code: without its test module and its comments."""
    cut = TEST_MODULE.search(text)
    if cut:
        text = text[: cut.start()]
    return "\n".join(re.sub(r"//.*", "", line) for line in text.split("\n"))


def imports(root="src"):
    """`{module: {imported module: [files]}}` for every module under root."""
    graph = defaultdict(lambda: defaultdict(set))
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            module = module_of(path)
            graph[module]
            with open(path, encoding="utf-8") as source:
                code = code_of(source.read())
            for match in CRATE_PATH.finditer(code):
                if match.group(1) != module:
                    graph[module][match.group(1)].add(path)
    return {m: {t: files for t, files in ts.items() if t in graph} for m, ts in graph.items()}


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    graph = imports()
    found = cycles(graph)
    if not found:
        print(f"layers: {len(graph)} modules, no import cycle")
        return 0
    for component in found:
        print(f"layers: a cycle of {len(component)} modules: {', '.join(component)}")
        for a in component:
            for b in sorted(graph[a]):
                if b in component:
                    files = ", ".join(sorted(graph[a][b]))
                    print(f"  {a} -> {b}  ({files})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
