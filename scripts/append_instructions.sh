#!/usr/bin/env bash
# Instructions per append at two revisions, counted by callgrind (repeatable
# whatever else the machine runs, unlike wall-clock medians): builds
# examples/append_count.rs at each revision in a scratch worktree, runs it
# with 100 000 and 300 000 appends per shape, and prints
# (I(300 000) - I(100 000)) / 200 000 for each. BENCHMARKS.md's "Append"
# section quotes its output.
#
#   scripts/append_instructions.sh BEFORE [AFTER]     (AFTER defaults to HEAD)
#
# A revision older than the example gets today's copy of it, without the
# `durable0` shape where `with_undurable_budget` did not exist yet.
set -euo pipefail
before=${1:?usage: scripts/append_instructions.sh BEFORE [AFTER]}
after=${2:-HEAD}
root=$(git rev-parse --show-toplevel)
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 1; }
work=$(mktemp -d)
trap 'for w in "$work"/rev-*; do git -C "$root" worktree remove --force "$w" 2>/dev/null; done; rm -rf "$work"' EXIT

build() { # revision -> path of its append_count binary
  local rev=$1 dir="$work/rev-$1"
  git -C "$root" worktree add -q --detach "$dir" "$rev"
  if grep -rqs "fn with_undurable_budget" "$dir/src"; then
    cp "$root/examples/append_count.rs" "$dir/examples/append_count.rs"
  else
    sed -e '/if shape == "durable0"/,/^            }$/d' "$root/examples/append_count.rs" \
      >"$dir/examples/append_count.rs"
  fi
  (cd "$dir" && CARGO_TARGET_DIR="$work/target-$rev" cargo build -q --release --example append_count)
  echo "$work/target-$rev/release/examples/append_count"
}

count() { # binary shape n -> instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

old=$(build "$before")
new=$(build "$after")
printf '%-10s %10s %10s\n' shape "$before" "$after"
for shape in handle spread durable durable0; do
  line="$shape"
  for bin in "$old" "$new"; do
    low=$(count "$bin" "$shape" 100000)
    high=$(count "$bin" "$shape" 300000)
    line="$line $(( (high - low) / 200000 ))"
  done
  printf '%-10s %10s %10s\n' $line
done
