//! A per-thread memo of decisions, for services whose rules a call would otherwise walk
//! one by one (many rules that no exact attribute indexes: globs everywhere). A decision
//! is a pure function of the compiled policies and the call's principal, namespace, node,
//! message and the values of the metadata keys the rules read, so the memo is keyed by
//! exactly those (the bytes themselves, compared in full: no hash decides), and by the
//! compiled policies' id, which every compile makes new. Each thread (the lane readers,
//! the callers of the local path) keeps its own: no lock, no sharing. At most
//! [`MEMO_ENTRIES`] decisions are kept; then the memo starts over.

use std::cell::RefCell;
use std::collections::HashMap;

use super::engine::{Facts, RuleAt, Verdict};

/// Decisions kept per thread.
pub const MEMO_ENTRIES: usize = 4096;

#[derive(Default)]
struct Memo {
    /// The key being built (kept to reuse its allocation).
    key: Vec<u8>,
    decisions: HashMap<Box<[u8]>, (Verdict, Option<RuleAt>)>,
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo::default());
}

/// Ends a part of the key: 0xff never occurs in UTF-8.
fn part(key: &mut Vec<u8>, s: &str) {
    key.extend_from_slice(s.as_bytes());
    key.push(0xff);
}

/// The decision of the compiled policies `id`, reading metadata `keys`, on `f`: from the
/// memo, or `decide` (then kept).
pub(super) fn decide(
    id: u64,
    keys: &[Box<str>],
    f: &Facts<'_>,
    decide: impl FnOnce() -> (Verdict, Option<RuleAt>),
) -> (Verdict, Option<RuleAt>) {
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        let Memo { key, decisions } = &mut *memo;
        key.clear();
        key.extend_from_slice(&id.to_le_bytes());
        part(key, f.principal);
        match f.namespace {
            Some(ns) => {
                key.push(1);
                part(key, ns);
            }
            None => key.push(0),
        }
        part(key, f.node);
        part(key, f.message);
        for k in keys {
            match f.metadata.get(k) {
                Some(v) => {
                    key.push(1);
                    part(key, v);
                }
                None => key.push(0),
            }
        }
        if let Some(d) = decisions.get(key.as_slice()) {
            return *d;
        }
        let d = decide();
        if decisions.len() >= MEMO_ENTRIES {
            decisions.clear();
        }
        decisions.insert(key.as_slice().into(), d);
        d
    })
}
