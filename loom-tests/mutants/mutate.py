"""Applies one named mutation to livereplay's core in the current directory.

Each mutation weakens one ordering or drops one check that a loom model is
meant to catch (see ../README.md). Run only in a scratch worktree
(mutants/run.sh makes one); never in the main checkout.
"""
import sys

MUTATIONS = {
    # Doorbell::ring without its SeqCst fence: the store-buffering race
    # between a writer's publish and a parking subscriber's re-check.
    "ring-no-fence": [("src/ring/doorbell.rs",
        "        fence(SeqCst);\n        // Acquire: when we see",
        "        // Acquire: when we see")],
    # Doorbell::arm without its SeqCst fence (the other half).
    "arm-no-fence": [("src/ring/doorbell.rs",
        "        fence(SeqCst);\n        listener",
        "        listener")],
    # next_timeout waits without re-checking the ring after arming.
    "no-recheck-after-arm": [("src/subscription.rs",
        "let rechecked = self.try_next();",
        "let rechecked: Result<Arc<Event<T>>, TryNextError> = Err(TryNextError::Empty);")],
    # A lapped writer installs its older segment over the newer one.
    "lapped-writer-installs": [("src/ring/directory.rs",
        "                Some(segment) if segment.number() > place.segment => true,\n",
        "")],
    # A batch is written first to last.
    "batch-first-to-last": [("src/ring/mod.rs",
        "            .iter()\n            .rev()\n",
        "            .iter()\n")],
    # Eviction ignores that a handle still holds the session.
    "evict-no-strong-count": [("src/session.rs",
        "if Arc::strong_count(this) != 1 {",
        "if false {")],
    # A claim after close is not refused.
    "claim-no-closed-check": [("src/ring/mod.rs",
        "if previous & CLOSED != 0 {",
        "if false {")],
    # A lower watermark lowers the floor.
    "floor-swap-not-max": [("src/ring/mod.rs",
        "let previous = self.floor.fetch_max(to, Relaxed);",
        "let previous = self.floor.swap(to, Relaxed);")],
    # Segments are freed before the floor is raised.
    "free-before-floor": [
        ("src/ring/mod.rs",
         "let previous = self.floor.fetch_max(to, Relaxed);",
         "let previous = self.floor.load(Relaxed);"),
        ("src/ring/mod.rs",
         "        let _freed = self.directory.free_through(previous + 1, to);\n",
         "        let _freed = self.directory.free_through(previous + 1, to);\n"
         "        self.floor.fetch_max(to, Relaxed);\n"),
    ],
    # The published-tail hint without its Acquire/Release pairing.
    "published-hint-relaxed": [
        ("src/ring/mod.rs",
         "let hint = self.published.load(Acquire);\n        self.walk(hint, hint)",
         "let hint = self.published.load(Relaxed);\n        self.walk(hint, hint)"),
        ("src/ring/mod.rs",
         "self.published.fetch_max(tail, Release);",
         "self.published.fetch_max(tail, Relaxed);"),
        ("src/ring/mod.rs",
         "self.published.store(last, Release);",
         "self.published.store(last, Relaxed);"),
    ],
    # A writer advances the tail past its own position even when a lower
    # position is still in flight (a hole below it).
    "tail-skips-hole": [("src/ring/mod.rs",
        "if hint + 1 < first {",
        "if false {")],
    # A replay does not re-check the floor after reading its run.
    "read-range-no-floor-check": [("src/ring/mod.rs",
        "if from <= self.floor().min(to) {",
        "if false {")],
}


def apply(path, old, new):
    text = open(path).read()
    if text.count(old) != 1:
        sys.exit(f"{path}: expected the mutated code once, found it {text.count(old)} times")
    open(path, "w").write(text.replace(old, new))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in MUTATIONS:
        sys.exit("usage: mutate.py " + "|".join(MUTATIONS))
    for edit in MUTATIONS[sys.argv[1]]:
        apply(*edit)
