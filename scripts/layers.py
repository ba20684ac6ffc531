#!/usr/bin/env python3
"""Checks that the crate's top-level modules import one way (issue 24).

A module is a file or folder directly under `src/` (`src/session/lost.rs`
belongs to `session`). Module `a` imports `b` when `a`'s code names
`crate::b` (a `use` line or a path): comments, doc comments and the test
module at the end of a file are not code and do not count.

Two checks, both must hold:

* **Layers.** Every module has a place in `LAYERS`, lowest first, and
  imports only modules of its own layer or below. The core (foundations,
  the ring, sessions and subscriptions, handles, the map) names no log, no
  persister and no catch-up: the durable tier reaches it only through the
  `session::DurableTier` trait it implements. The store is the facade
  where the core and the tiers meet (its builder starts the persister, its
  API hands out catch-ups), and the integrations sit on the store. A new
  module must be given a layer here.
* **No cycles** inside a layer either (strongly connected components of
  the import graph with more than one module).

Run from the repository's root (`.ci/run` does):

    python3 scripts/layers.py

Prints what it found; exits 1 on any violation.
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


LAYERS = [
    ("foundations", {"sync", "key", "cursor", "links", "event", "error", "config", "clock", "codec", "closure"}),
    ("ring", {"ring"}),
    ("sessions", {"session", "subscription"}),
    ("handles", {"handle"}),
    ("map", {"map"}),
    ("logs", {"durable", "tail"}),
    ("tiers", {"persist", "catchup"}),
    ("store", {"store"}),
    ("integrations", {"traits", "wire", "adapters", "dag", "http", "streams"}),
    ("entry points", {"lib", "bin"}),
]


def layer_of(module):
    """The index of `module`'s layer in `LAYERS`, or None."""
    for index, (_, members) in enumerate(LAYERS):
        if module in members:
            return index
    return None


def upward(graph):
    """Imports of a higher layer, and modules with no layer."""
    problems = []
    for a in sorted(graph):
        la = layer_of(a)
        if la is None:
            problems.append(f"  {a} has no layer: give it one in LAYERS (scripts/layers.py)")
            continue
        for b in sorted(graph[a]):
            lb = layer_of(b)
            if lb is not None and lb > la:
                files = ", ".join(sorted(graph[a][b]))
                problems.append(
                    f"  {a} ({LAYERS[la][0]}) imports {b} ({LAYERS[lb][0]}), a layer above it  ({files})"
                )
    return problems


def main():
    graph = imports()
    found = cycles(graph)
    problems = upward(graph)
    if problems:
        print(f"layers: {len(problems)} import(s) against the layers:")
        print("\n".join(problems))
    if not found and not problems:
        print(f"layers: {len(graph)} modules in {len(LAYERS)} layers, every import downward or within a layer, no cycle")
        return 0
    for component in found:
        print(f"layers: a cycle of {len(component)} modules: {', '.join(component)}")
        for a in component:
            for b in sorted(graph[a]):
                if b in component:
                    files = ", ".join(sorted(graph[a][b]))
                    print(f"  {a} -> {b}  ({files})")
    return 1 if found or problems else 0


if __name__ == "__main__":
    sys.exit(main())
