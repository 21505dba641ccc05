//! `spec.wakeWith`: ElastiServices of one namespace woken together. Pure: the wake
//! endpoint asks whom a wake reaches, the reconcile asks who keeps a member up.
//!
//! Waking a member wakes every member it names, and theirs in turn (transitively).
//! A member is kept up while a member that wakes it is up, so an API's backend does not
//! sleep under the API. In a cycle (a wakes b, b wakes a) the members would keep each
//! other up forever; members of one cycle therefore never block each other: each sleeps
//! on its own idleness, and waking any of them wakes them all again.
use std::collections::{BTreeMap, BTreeSet};

/// One namespace's wake graph: each member and the members its `wakeWith` names.
#[derive(Debug, Default)]
pub struct Graph<'a> {
    edges: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Graph<'a> {
    /// The graph of `members` (name, `wakeWith`). Names that are no member are ignored
    /// where they are reached (a `wakeWith` may name an ElastiService not made yet).
    pub fn new(members: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Self {
        let edges = members
            .into_iter()
            .map(|(name, with)| (name, with.iter().map(String::as_str).collect()))
            .collect();
        Self { edges }
    }

    /// Every member a wake of `start` reaches, `start` itself left out. Each member is
    /// visited once, so cycles end.
    pub fn woken_by(&self, start: &str) -> BTreeSet<&'a str> {
        let mut seen = BTreeSet::new();
        let mut next: Vec<&'a str> = self.edges.get(start).cloned().unwrap_or_default();
        while let Some(m) = next.pop() {
            if m == start || !self.edges.contains_key(m) || !seen.insert(m) {
                continue;
            }
            next.extend(self.edges.get(m).into_iter().flatten().copied());
        }
        seen
    }

    /// The members whose wake reaches `member` and that `member`'s wake does not reach
    /// back: while one of them is up, `member` stays up.
    pub fn keepers_of(&self, member: &str) -> BTreeSet<&'a str> {
        let back = self.woken_by(member);
        self.edges
            .keys()
            .copied()
            .filter(|w| *w != member && !back.contains(w))
            .filter(|w| self.woken_by(w).contains(member))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(spec: &[(&'static str, &[&str])]) -> (Vec<String>, Vec<Vec<String>>) {
        let names = spec.iter().map(|(n, _)| n.to_string()).collect();
        let with = spec
            .iter()
            .map(|(_, w)| w.iter().map(|s| s.to_string()).collect())
            .collect();
        (names, with)
    }

    fn build<'a>(names: &'a [String], with: &'a [Vec<String>]) -> Graph<'a> {
        Graph::new(
            names
                .iter()
                .map(String::as_str)
                .zip(with.iter().map(Vec::as_slice)),
        )
    }

    #[test]
    fn a_wake_reaches_members_transitively() {
        let (n, w) = graph(&[
            ("api", &["db"]),
            ("db", &["cache"]),
            ("cache", &[]),
            ("x", &[]),
        ]);
        let g = build(&n, &w);
        assert_eq!(g.woken_by("api"), BTreeSet::from(["db", "cache"]));
        assert_eq!(g.woken_by("db"), BTreeSet::from(["cache"]));
        assert!(g.woken_by("cache").is_empty());
        assert_eq!(g.keepers_of("cache"), BTreeSet::from(["api", "db"]));
        assert_eq!(g.keepers_of("db"), BTreeSet::from(["api"]));
        assert!(g.keepers_of("api").is_empty());
        assert!(g.keepers_of("x").is_empty());
    }

    #[test]
    fn cycles_end_and_their_members_do_not_keep_each_other_up() {
        let (n, w) = graph(&[
            ("a", &["b"]),
            ("b", &["a", "c"]),
            ("c", &[]),
            ("front", &["a"]),
        ]);
        let g = build(&n, &w);
        assert_eq!(g.woken_by("a"), BTreeSet::from(["b", "c"]));
        assert_eq!(g.woken_by("b"), BTreeSet::from(["a", "c"]));
        // a and b are one cycle: neither keeps the other up; front keeps both.
        assert_eq!(g.keepers_of("a"), BTreeSet::from(["front"]));
        assert_eq!(g.keepers_of("b"), BTreeSet::from(["front"]));
        assert_eq!(g.keepers_of("c"), BTreeSet::from(["a", "b", "front"]));
    }

    #[test]
    fn a_self_reference_and_unknown_names_are_ignored() {
        let (n, w) = graph(&[("a", &["a", "ghost"]), ("b", &[])]);
        let g = build(&n, &w);
        assert!(g.woken_by("a").is_empty());
        assert!(g.keepers_of("a").is_empty());
        assert!(g.woken_by("nobody").is_empty());
    }
}
