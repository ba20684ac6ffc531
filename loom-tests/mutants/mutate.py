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
        "        fence(SeqCst);\n        // Relaxed: the fence above orders it;",
        "        // Relaxed: the fence above orders it;")],
    # Issue 11 follow-up: the fences moved across the Relaxed `parked`
    # accesses they order (the argument for Relaxed there). 5a, 5b.
    "arm-fence-before-increment": [("src/ring/doorbell.rs",
        "        self.parked.fetch_add(1, Relaxed);\n        // SeqCst fence: pairs with the fence in `ring` (module docs).\n        fence(SeqCst);\n",
        "        fence(SeqCst);\n        self.parked.fetch_add(1, Relaxed);\n")],
    "ring-load-before-fence": [("src/ring/doorbell.rs",
        "        fence(SeqCst);\n        // Relaxed: the fence above orders it; the mutex orders the list\n        // after the registration (module docs).\n        if self.parked.load(Relaxed) != 0 {",
        "        let parked = self.parked.load(Relaxed);\n        fence(SeqCst);\n        if parked != 0 {")],
    # Doorbell::arm without its SeqCst fence (the other half).
    "arm-no-fence": [("src/ring/doorbell.rs",
        "        fence(SeqCst);\n        ticket\n",
        "        ticket\n")],
    # next_timeout waits without re-checking the ring after arming.
    "no-recheck-after-arm": [("src/subscription.rs",
        "let rechecked = self.try_next();",
        "let rechecked: Result<Arc<Event<T>>, TryNextError> = Err(TryNextError::Empty);")],
    # A lapped writer installs its older segment over the newer one.
    "lapped-writer-installs": [("src/ring/directory.rs",
        "                Some(segment) if segment.number() > place.segment => {\n"
        "                    // Release: pairs with the persister's Acquire (module\n"
        "                    // `kept`): it then sees what this writer kept before.\n"
        "                    self.lapped_through.fetch_max(event.position, Release);\n"
        "                    true\n"
        "                }\n",
        "")],
    # A batch is written first to last.
    "batch-first-to-last": [("src/ring/mod.rs",
        "        for event in events.iter().rev() {\n",
        "        for event in events.iter() {\n")],
    # Issue 13, fourth round: the write-once slot publishes its event with a
    # Relaxed store, or a reader loads it Relaxed: the slot's loom witness
    # reports the read of an event not ordered after its write.
    "slot-publish-relaxed": [("src/ring/slot.rs",
        "self.value.store(Arc::into_raw(value).cast_mut(), Release);",
        "self.value.store(Arc::into_raw(value).cast_mut(), Relaxed);")],
    "slot-read-relaxed": [("src/ring/slot.rs",
        "    pub(crate) fn get(&self) -> Option<Arc<E>> {\n        // Acquire: pairs with `set`'s Release (invariant 3).\n        let value = self.value.load(Acquire);",
        "    pub(crate) fn get(&self) -> Option<Arc<E>> {\n        let value = self.value.load(Relaxed);")],
    # Issue 13, fifth round: the lending read (`peek`) loads the slot
    # Relaxed; a loan lends a segment without checking it is the place's
    # own (a newer one, after a lap, or an older one put back); a loan is
    # made without re-checking the floor after the read.
    "slot-peek-relaxed": [("src/ring/slot.rs",
        "    pub(crate) fn peek(&self) -> Option<&E> {\n        // Acquire: pairs with `set`'s Release (invariant 3).\n        let value = self.value.load(Acquire);",
        "    pub(crate) fn peek(&self) -> Option<&E> {\n        let value = self.value.load(Relaxed);")],
    "lend-any-segment": [("src/ring/lend.rs",
        "                Some(segment) if segment.number() == place.segment => {\n",
        "                Some(segment) => {\n")],
    "lend-no-floor-recheck": [("src/ring/lend.rs",
        "        if from <= self.floor().min(to) {\n            // A trim raised the floor into what we read: not servable whole.\n            return Err(from);\n        }\n        Ok(lend(",
        "        Ok(lend(")],
    # Issue 13, fifth round: a `SessionWriter` writes into its kept segment
    # whatever segment the position is in.
    "writer-kept-any-segment": [("src/ring/mod.rs",
        "            Some(segment) if segment.number() == place.segment => {\n                segment.publish_owned",
        "            Some(segment) => {\n                segment.publish_owned")],
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
    # Eviction ignores the explicit holder count (handles, subscriptions).
    "evict-no-holders-check": [("src/session/mod.rs",
        "if this.holders.load(std::sync::atomic::Ordering::Acquire) != 0 {",
        "if false {")],
    # Eviction reads the holder count without Acquire.
    "holders-load-relaxed": [("src/session/mod.rs",
        "if this.holders.load(std::sync::atomic::Ordering::Acquire) != 0 {",
        "if this.holders.load(std::sync::atomic::Ordering::Relaxed) != 0 {")],
    # A holder lets go without Release.
    "let-go-relaxed": [("src/session/mod.rs",
        ".fetch_sub(1, std::sync::atomic::Ordering::Release);",
        ".fetch_sub(1, std::sync::atomic::Ordering::Relaxed);")],
    # Tiers. A revived session forgets its tombstone's identity.
    "revive-fresh-identity": [("src/map.rs",
        "                        _ => Restored::continuing(tombstone.identity).closed(tombstone.closed),\n",
        "                        _ => Restored::continuing(Identity::fresh()).closed(tombstone.closed),\n")],
    # The persister clears the dirty flag after reading, not before.
    "persister-clears-after-read": [
        ("src/persist/mod.rs",
         "        session.dirty.store(false, Relaxed);\n        fence(SeqCst);\n",
         ""),
        ("src/persist/mod.rs",
         "        let tail = session.ring.published_tail();\n",
         "        let tail = session.ring.published_tail();\n"
         "        session.dirty.store(false, Relaxed);\n"),
    ],
    # The persister's clear-then-read without its SeqCst fence.
    "persister-no-fence": [("src/persist/mod.rs",
        "        session.dirty.store(false, Relaxed);\n        fence(SeqCst);\n",
        "        session.dirty.store(false, Relaxed);\n")],
    # An append checks the dirty flag before publishing (before the
    # doorbell's fence), not after.
    "dirty-before-publish": [
        ("src/session/mod.rs",
         "        this.ring.publish(&event);\n        Self::mark_dirty(this);\n",
         "        Self::mark_dirty(this);\n        this.ring.publish(&event);\n"),
    ],
    # Catch-up treats its ring subscription's lag as the end (no fallback
    # to the log).
    "catch-up-no-log-fallback": [("src/catchup.rs",
        "                        if matches!(gap.reason, GapReason::Trimmed | GapReason::Reset)\n                            && self.persistence.is_some() =>\n",
        "                        if false && matches!(gap.reason, GapReason::Trimmed | GapReason::Reset) =>\n")],
    # The persister skips positions the ring lapped instead of recording
    # a hole.
    "persister-skips-lapped": [("src/persist/mod.rs",
        "                Undurable::Lost => HoleReason::Lapped,",
        "                Undurable::Lost => continue,")],
    # Issue 11 follow-up. The persister raises the watermark before its
    # commit reaches the log (T5).
    "watermark-before-commit": [("src/persist/mod.rs",
        "            let result = self.log.append(&writes);",
        "            for pending in &batch {\n"
        "                pending.session.durable.store(pending.through, Relaxed);\n"
        "            }\n"
        "            let result = self.log.append(&writes);")],
    # The commit notifies waiters before raising the watermark (T6).
    "notify-before-watermark": [
        ("src/persist/mod.rs",
         "        self.progress.notify(usize::MAX);\n        ok\n",
         "        ok\n"),
        ("src/persist/mod.rs",
         "        let ok = match &result {",
         "        self.progress.notify(usize::MAX);\n        let ok = match &result {"),
    ],
    # Issue 22. Closing seals the ring before it takes the lock under which
    # the closure is recorded: a reader can find the ring sealed and no
    # closure, and end as if the session were removed (5f).
    "close-seals-outside-lock": [("src/session/mod.rs",
        "    pub(crate) fn close(this: &Arc<Self>, reason: CloseReason) -> Result<Closure, Refusal> {\n        let mut end = this.lock_end();\n",
        "    pub(crate) fn close(this: &Arc<Self>, reason: CloseReason) -> Result<Closure, Refusal> {\n        let sealed = this.ring.seal();\n        let mut end = this.lock_end();\n"),
        ("src/session/mod.rs",
        "        if end.removed || this.ring.is_closed() {\n",
        "        if end.removed {\n"),
        ("src/session/mod.rs",
        "            last: this.ring.seal(),\n",
        "            last: sealed,\n")],
    # A turn's session is queued for the persister before the mark is set
    # under the `end` lock: a round can take the session, find no mark, and
    # nothing queues it again (T12).
    "turn-queued-before-marked": [("src/session/mod.rs",
        "    pub(crate) fn open_turn(this: &Arc<Self>) {\n        let mut end = this.lock_end();\n",
        "    pub(crate) fn open_turn(this: &Arc<Self>) {\n        Self::mark_dirty(this);\n        let mut end = this.lock_end();\n"),
        ("src/session/mod.rs",
        "        end.turn = TurnMark::ToWrite;\n        drop(end);\n        // As in `close`: the `end` lock orders this against the persister,\n        // which clears `dirty` before it takes that lock to look.\n        Self::mark_dirty(this);\n",
        "        end.turn = TurnMark::ToWrite;\n        drop(end);\n")],
    # A reader at a closed ring ends with the closure without waiting for
    # an append claimed before the seal and still being published (5f).
    "closed-reader-skips-in-flight": [("src/session/mod.rs",
        "                Some(closure) if next <= closure.last => Ok(None),\n",
        "")],
    # Issue 21. The removed session is registered with the persister after
    # its entry left the map, not under the shard's lock (T7).
    "remove-registers-after-leaving": [
        ("src/map.rs",
         "                    if let Some(durable) = &shared.durable {\n                        durable.removed(session, last);\n                    }\n",
         "                    let _ = last;\n"),
        ("src/map.rs",
         "                self.live.fetch_sub(1, Relaxed);\n                session.ring.wake_closed();\n",
         "                self.live.fetch_sub(1, Relaxed);\n"
         "                if let Some(durable) = &shared.durable {\n"
         "                    durable.removed(&session, session.ring.claimed());\n"
         "                }\n"
         "                session.ring.wake_closed();\n"),
    ],
    # A restore is used even if a session of its key left the map while it
    # read the log (T7).
    "restore-ignores-departures": [("src/map.rs",
        "let unchanged = self.departures[self.stripe(key)].load(Relaxed) == departures;",
        "let unchanged = self.departures[self.stripe(key)].load(Relaxed) >= departures;")],
    # Over a shared log a tombstone is revived without asking the log (T8).
    "revive-without-asking-the-log": [("src/map.rs",
        "            Some(Some(_)) => shared_log,",
        "            Some(Some(_)) => false,")],
    # The watermark passes a hole before the session records it (T9).
    "watermark-before-holes-recorded": [("src/persist/mod.rs",
        "                for pending in &batch {\n                    let mut lost = None;\n",
        "                for pending in &batch {\n"
        "                    pending.session.durable.store(pending.through, Release);\n"
        "                    let mut lost = None;\n")],
    # A trim counts only a remembered tombstone as dormant, so a revival
    # between the eviction and the forgetting takes the count below zero
    # (T10; the code before issue 21).
    # The persister takes a hand-over still in flight (the writer has
    # displaced the segment but not yet handed it over) for a segment let
    # go (T11): a hole over an event the ring keeps.
    "in-flight-read-as-let-go": [("src/ring/kept.rs",
        "        if position <= let_go_through {\n",
        "        if position <= let_go_through || true {\n")],
    # A segment let go for want of budget is not counted in
    # `let_go_through` (T4): the persister waits for a hand-over that never
    # comes, and the lapped position is never written, not even as a hole.
    "let-go-unmarked": [("src/ring/kept.rs",
        "            self.let_go(last_position);\n",
        "")],
    # The durable waits' watcher listens for commits only after it looked
    # at the registry: a commit between the two is missed (W1).
    "watcher-arms-after-look": [("src/store/waits.rs",
        "        let progress = store.durable_progress();\n        let (settled_now, waiting) = registry.settle(&store);\n",
        "        let (settled_now, waiting) = registry.settle(&store);\n        let progress = store.durable_progress();\n")],
    # A first registration does not wake a running watcher, which sleeps
    # on the wake alone while the registry is empty (W2).
    "registration-skips-the-wake": [("src/store/waits.rs",
        "            if first {\n                // Under the lock (module docs, \"the watcher's side\").\n                self.wake.notify(1);\n            }\n",
        "            let _ = first;\n")],
    "trim-counts-only-remembered": [
        ("src/map.rs",
         "            self.account_eviction(shared, &session, true);\n",
         "            self.account_eviction(shared, &session, tombstone.identity.start > 0 && keep_tombstones);\n"),
        ("src/map.rs",
         "                if forgotten.is_some() {\n",
         "                if false && forgotten.is_some() {\n"),
    ],
}


def apply(path, old, new):
    text = open(path).read()
    if text.count(old) != 1:
        sys.exit(f"{path}: expected the mutated code once, found it {text.count(old)} times")
    open(path, "w").write(text.replace(old, new))


def check():
    """Every mutation's code is in the tree exactly once: a change that
    moves the code a mutation names must move the mutation with it."""
    stale = [
        f"{name}: {path} holds its code {open(path).read().count(old)} times, not once"
        for name, edits in MUTATIONS.items()
        for path, old, _ in edits
        if open(path).read().count(old) != 1
    ]
    if stale:
        sys.exit("stale mutations:\n" + "\n".join(stale))
    print(f"mutate.py: all {len(MUTATIONS)} mutations apply")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        check()
    elif len(sys.argv) != 2 or sys.argv[1] not in MUTATIONS:
        sys.exit("usage: mutate.py --check|" + "|".join(MUTATIONS))
    else:
        for edit in MUTATIONS[sys.argv[1]]:
            apply(*edit)
