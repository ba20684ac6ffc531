//! Subscription patterns: globs over stream paths, segment by segment.
//!
//! `*` matches exactly one path segment, `**` zero or more; any other
//! segment matches itself. Matching walks segments, never characters, so a
//! pattern costs at most (pattern segments) x (path segments) steps.

/// Whether `path` matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    // reachable[j]: the pattern prefix so far can end right before path[j].
    let mut reachable = vec![false; path.len() + 1];
    reachable[0] = true;
    for segment in pattern {
        let mut next = vec![false; path.len() + 1];
        for j in 0..=path.len() {
            if !reachable[j] {
                continue;
            }
            match segment {
                "**" => next[j..].iter_mut().for_each(|cell| *cell = true),
                "*" if j < path.len() => next[j + 1] = true,
                literal if j < path.len() && path[j] == literal => next[j + 1] = true,
                _ => {}
            }
        }
        reachable = next;
    }
    reachable[path.len()]
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn single_and_double_stars_match_segments() {
        assert!(matches("events/*", "events/a"));
        assert!(!matches("events/*", "events/a/b"));
        assert!(!matches("events/*", "events"));
        assert!(matches("events/**", "events"));
        assert!(matches("events/**", "events/a/b"));
        assert!(matches("**/log", "a/b/log"));
        assert!(matches("a/*/c", "a/b/c"));
        assert!(!matches("a/*/c", "a/b/d"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }
}
