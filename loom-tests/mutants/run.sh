#!/usr/bin/env bash
# Mutation check of the loom models: in a scratch git worktree of HEAD (never
# the main checkout), apply each mutation of mutate.py to the core, build the
# loom models, run every model alone, and print one line per model: whether
# loom caught the mutation (FAIL or DEADLOCK) or not (pass), and how long
# the run took. Removes the worktree at the end.
#
#   loom-tests/mutants/run.sh [MUTATION...]       (default: all)
#   ONLY='regex' loom-tests/mutants/run.sh        (only the models matching)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
worktree=${MUTANT_WORKTREE:-/tmp/lr-mutant}
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
export RUSTFLAGS="--cfg loom"
export CARGO_TARGET_DIR="$worktree/target"

mutations=("$@")
if [ "${#mutations[@]}" -eq 0 ]; then
    mapfile -t mutations < <(python3 -c "
import sys; sys.path.insert(0, '$here'); import mutate; print('\n'.join(mutate.MUTATIONS))")
fi

git -C "$root" worktree add --detach "$worktree" HEAD >/dev/null
trap 'git -C "$root" worktree remove --force "$worktree"' EXIT
cd "$worktree"
base() {
    git checkout -q -- src
}

for mutation in "${mutations[@]}"; do
    base
    python3 "$here/mutate.py" "$mutation"
    if ! cargo test -q -p loom-tests --release --no-run 2>"$worktree/build.log"; then
        printf '%-26s BUILD-FAILED\n' "$mutation"; tail -20 "$worktree/build.log"; continue
    fi
    for file in loom-tests/tests/*.rs; do
        test_name=$(basename "$file" .rs)
        binary=$(cargo test -q -p loom-tests --release --test "$test_name" --no-run \
            --message-format=json 2>/dev/null |
            sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
        for model in $("$binary" --list 2>/dev/null | sed -n 's/: test$//p' |
            grep -E "${ONLY:-.}" || true); do
            started=$(date +%s%N)
            output=$(timeout 600 "$binary" --exact "$model" --nocapture 2>&1) &&
                status=0 || status=$?
            elapsed_ms=$((($(date +%s%N) - started) / 1000000))
            if [ "$status" -eq 0 ]; then verdict=pass
            elif [ "$status" -eq 124 ]; then verdict=TIMEOUT
            elif grep -q 'deadlock' <<<"$output"; then verdict=DEADLOCK
            else verdict=FAIL; fi
            reason=$(grep -m1 -A1 'panicked at' <<<"$output" | tail -1 | cut -c1-100 || true)
            printf '%-26s %-58s %-8s %7d ms  %s\n' "$mutation" "$model" "$verdict" \
                "$elapsed_ms" "$reason"
        done
    done
done
