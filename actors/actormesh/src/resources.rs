//! Resources an agent offers: scalars (cpus, mem, disk, custom ones such as gpus), ranges
//! (ports) and sets, parsed from `cpus:4;mem:8GiB;disk:20GiB;ports:[31000-32000]`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// What an agent offers. `mem` and `disk` are in MiB, as in Mesos.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// cpus, mem (MiB), disk (MiB) and custom scalars.
    pub scalars: BTreeMap<String, f64>,
    /// Inclusive ranges, e.g. ports.
    pub ranges: BTreeMap<String, Vec<(u64, u64)>>,
    /// Named items, e.g. devices.
    pub sets: BTreeMap<String, BTreeSet<String>>,
}

/// A resource string did not parse. Names the part that was wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid resources: {token:?}: {problem} (expected {expected})")]
pub struct ResourceError {
    /// The `name:value` part that is wrong (or the whole string).
    pub token: String,
    /// What is wrong.
    pub problem: String,
    /// What would have been right.
    pub expected: &'static str,
}

/// Resources that arrived decoded (not parsed) hold what a parse would have refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidResources {
    /// A scalar amount is negative or not finite.
    #[error("resource {kind}:{amount} is not valid: expected a finite amount of 0 or more")]
    Amount {
        /// The resource kind.
        kind: String,
        /// The amount given.
        amount: f64,
    },
    /// A range runs from high to low.
    #[error("resource {kind}:[{start}-{end}] is not valid: expected ranges from low to high")]
    Range {
        /// The resource kind.
        kind: String,
        /// Where the range starts.
        start: u64,
        /// Where it ends (below its start).
        end: u64,
    },
}

const FORMAT: &str =
    "name:value pairs separated by ';', e.g. cpus:4;mem:8GiB;disk:20GiB;ports:[31000-32000]";
const SIZE: &str = "a size such as 512MiB, 8GiB, 2TB or a number of MiB";
const NUMBER: &str = "a non-negative number such as 4 or 0.5";
const RANGES: &str = "ranges such as [31000-32000] or [80-80,8000-9000] with start <= end";
const SET: &str = "a set such as {a,b,c}";

fn err(token: &str, problem: impl Into<String>, expected: &'static str) -> ResourceError {
    ResourceError {
        token: token.to_string(),
        problem: problem.into(),
        expected,
    }
}

/// Parses `512MiB`, `8GiB`, `2TB`, `1024` (MiB) into MiB.
fn parse_size(token: &str, v: &str) -> Result<f64, ResourceError> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| err(token, format!("{v:?} does not start with a number"), SIZE))?;
    const MIB: f64 = 1024.0 * 1024.0;
    let bytes_per_unit = match unit {
        "" | "MiB" => MIB,
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "GiB" => 1024.0 * MIB,
        "TiB" => 1024.0 * 1024.0 * MIB,
        other => return Err(err(token, format!("unknown unit {other:?}"), SIZE)),
    };
    Ok(n * bytes_per_unit / MIB)
}

/// A scalar other than `mem` and `disk` takes a plain number; a value that reads as a size
/// (`64MiB`) most likely meant `mem` (or `disk`): say so.
fn with_unit_hint(e: ResourceError, name: &str, value: &str) -> ResourceError {
    if parse_size(&e.token, value).is_err() {
        return e;
    }
    let guess = if name.starts_with('d') { "disk" } else { "mem" };
    ResourceError {
        problem: format!(
            "{value:?} has a unit, and only mem and disk take units (custom resources such as {name:?} are plain numbers); did you mean {guess}:{value}?"
        ),
        ..e
    }
}

fn parse_number(token: &str, v: &str) -> Result<f64, ResourceError> {
    let n: f64 = v
        .parse()
        .map_err(|_| err(token, format!("{v:?} is not a number"), NUMBER))?;
    if !n.is_finite() || n < 0.0 {
        return Err(err(token, format!("{v} is negative or not finite"), NUMBER));
    }
    Ok(n)
}

fn parse_ranges(token: &str, v: &str) -> Result<Vec<(u64, u64)>, ResourceError> {
    let inner = v
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| err(token, "missing [ or ]", RANGES))?;
    let mut out = Vec::new();
    for part in inner.split(',') {
        let (a, b) = part
            .trim()
            .split_once('-')
            .ok_or_else(|| err(token, format!("{part:?} has no '-'"), RANGES))?;
        let a: u64 = a
            .trim()
            .parse()
            .map_err(|_| err(token, format!("{a:?} is not a whole number"), RANGES))?;
        let b: u64 = b
            .trim()
            .parse()
            .map_err(|_| err(token, format!("{b:?} is not a whole number"), RANGES))?;
        if a > b {
            return Err(err(token, format!("{a}-{b} runs backwards"), RANGES));
        }
        out.push((a, b));
    }
    out.sort_unstable();
    if out.windows(2).any(|w| w[1].0 <= w[0].1) {
        return Err(err(token, "ranges overlap", RANGES));
    }
    Ok(out)
}

fn parse_set(token: &str, v: &str) -> Result<BTreeSet<String>, ResourceError> {
    let inner = v
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| err(token, "missing { or }", SET))?;
    let items: BTreeSet<String> = inner
        .split(',')
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty())
        .collect();
    if items.is_empty() {
        return Err(err(token, "the set is empty", SET));
    }
    Ok(items)
}

impl std::str::FromStr for Resources {
    type Err = ResourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut r = Resources::default();
        let mut seen = BTreeSet::new();
        for token in s.split(';').map(str::trim).filter(|t| !t.is_empty()) {
            let (name, value) = token
                .split_once(':')
                .ok_or_else(|| err(token, "no ':' between name and value", FORMAT))?;
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(err(
                    token,
                    format!("{name:?} is not a resource name"),
                    FORMAT,
                ));
            }
            if !seen.insert(name.to_string()) {
                return Err(err(token, format!("{name} is given twice"), FORMAT));
            }
            if value.starts_with('[') {
                r.ranges
                    .insert(name.to_string(), parse_ranges(token, value)?);
            } else if value.starts_with('{') {
                r.sets.insert(name.to_string(), parse_set(token, value)?);
            } else if name == "mem" || name == "disk" {
                r.scalars
                    .insert(name.to_string(), parse_size(token, value)?);
            } else {
                let n = parse_number(token, value).map_err(|e| with_unit_hint(e, name, value))?;
                r.scalars.insert(name.to_string(), n);
            }
        }
        if seen.is_empty() {
            return Err(err(s, "no resources given", FORMAT));
        }
        if r.scalars.get("cpus").is_some_and(|c| *c <= 0.0) {
            return Err(err(s, "cpus must be more than 0", NUMBER));
        }
        Ok(r)
    }
}

/// Tolerance for comparing scalar amounts (cpus such as 0.1 + 0.2).
const EPSILON: f64 = 1e-9;

fn range_len(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(a, b)| b - a + 1).sum()
}

/// `a` minus `b`, both sorted, non-overlapping inclusive ranges.
fn subtract_ranges(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut start, end) in a {
        for &(bs, be) in b {
            if be < start || bs > end {
                continue;
            }
            if bs > start {
                out.push((start, bs - 1));
            }
            if be >= end {
                start = end + 1;
                break;
            }
            start = be + 1;
        }
        if start <= end {
            out.push((start, end));
        }
    }
    out
}

/// The union of two sorted range lists, merged.
fn add_ranges(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl Resources {
    /// Whether these resources include all of `other`.
    pub fn contains(&self, other: &Resources) -> bool {
        other
            .scalars
            .iter()
            .all(|(k, v)| *v <= self.scalars.get(k).copied().unwrap_or(0.0) + EPSILON)
            && other.ranges.iter().all(|(k, r)| {
                let mine = self.ranges.get(k).map(Vec::as_slice).unwrap_or(&[]);
                subtract_ranges(r, mine).is_empty()
            })
            && other
                .sets
                .iter()
                .all(|(k, items)| self.sets.get(k).is_some_and(|mine| items.is_subset(mine)))
    }

    /// These resources plus `other`.
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        for (k, v) in &other.scalars {
            *r.scalars.entry(k.clone()).or_insert(0.0) += v;
        }
        for (k, v) in &other.ranges {
            let merged = add_ranges(r.ranges.get(k).map(Vec::as_slice).unwrap_or(&[]), v);
            r.ranges.insert(k.clone(), merged);
        }
        for (k, v) in &other.sets {
            r.sets
                .entry(k.clone())
                .or_default()
                .extend(v.iter().cloned());
        }
        r
    }

    /// These resources minus `other` (which they must contain; amounts never go below 0).
    pub fn minus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        for (k, v) in &other.scalars {
            if let Some(mine) = r.scalars.get_mut(k) {
                *mine = (*mine - v).max(0.0);
                if *mine < EPSILON {
                    r.scalars.remove(k);
                }
            }
        }
        for (k, v) in &other.ranges {
            if let Some(mine) = r.ranges.get_mut(k) {
                *mine = subtract_ranges(mine, v);
                if mine.is_empty() {
                    r.ranges.remove(k);
                }
            }
        }
        for (k, v) in &other.sets {
            if let Some(mine) = r.sets.get_mut(k) {
                mine.retain(|i| !v.contains(i));
                if mine.is_empty() {
                    r.sets.remove(k);
                }
            }
        }
        r
    }

    /// The amount of resource `kind`, counting range and set sizes, for share arithmetic.
    pub fn amount(&self, kind: &str) -> f64 {
        if let Some(v) = self.scalars.get(kind) {
            return *v;
        }
        if let Some(r) = self.ranges.get(kind) {
            return range_len(r) as f64;
        }
        self.sets.get(kind).map_or(0.0, |s| s.len() as f64)
    }

    /// Every resource kind named here.
    pub fn kinds(&self) -> impl Iterator<Item = &String> {
        self.scalars
            .keys()
            .chain(self.ranges.keys())
            .chain(self.sets.keys())
    }

    /// Checks what parsing checks, for resources that arrived some other way (decoded from
    /// a message): amounts finite and not negative, ranges from low to high.
    pub fn validate(&self) -> Result<(), InvalidResources> {
        for (k, v) in &self.scalars {
            if !v.is_finite() || *v < 0.0 {
                return Err(InvalidResources::Amount {
                    kind: k.clone(),
                    amount: *v,
                });
            }
        }
        for (k, rs) in &self.ranges {
            if let Some(&(start, end)) = rs.iter().find(|(a, b)| a > b) {
                return Err(InvalidResources::Range {
                    kind: k.clone(),
                    start,
                    end,
                });
            }
        }
        Ok(())
    }

    /// Whether nothing is here.
    pub fn is_empty(&self) -> bool {
        self.scalars.values().all(|v| *v < EPSILON)
            && self.ranges.is_empty()
            && self.sets.is_empty()
    }

    /// Takes what `want` asks for, as far as these resources allow, but at least `need`:
    /// `None` if even `need` does not fit. Scalars get up to the wanted amount; ranges and
    /// sets are taken from the lowest values up.
    pub fn take_between(&self, need: &Resources, want: &Resources) -> Option<Resources> {
        if !self.contains(need) {
            return None;
        }
        let mut got = need.clone();
        let left = self.minus(need);
        for (k, w) in &want.scalars {
            let have = got.scalars.get(k).copied().unwrap_or(0.0);
            let extra = (w - have)
                .max(0.0)
                .min(left.scalars.get(k).copied().unwrap_or(0.0));
            if extra > EPSILON {
                *got.scalars.entry(k.clone()).or_insert(0.0) += extra;
            }
        }
        for (k, w) in &want.ranges {
            let have = range_len(got.ranges.get(k).map(Vec::as_slice).unwrap_or(&[]));
            let mut missing = range_len(w).saturating_sub(have);
            let mut extra = Vec::new();
            for &(a, b) in left.ranges.get(k).map(Vec::as_slice).unwrap_or(&[]) {
                if missing == 0 {
                    break;
                }
                let n = (b - a + 1).min(missing);
                extra.push((a, a + n - 1));
                missing -= n;
            }
            if !extra.is_empty() {
                let merged =
                    add_ranges(got.ranges.get(k).map(Vec::as_slice).unwrap_or(&[]), &extra);
                got.ranges.insert(k.clone(), merged);
            }
        }
        for (k, w) in &want.sets {
            let have = got.sets.get(k).map_or(0, |s| s.len());
            let missing = w.len().saturating_sub(have);
            let extra: Vec<String> = left
                .sets
                .get(k)
                .map(|s| s.iter().take(missing).cloned().collect())
                .unwrap_or_default();
            got.sets.entry(k.clone()).or_default().extend(extra);
        }
        Some(got)
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (k, v) in &self.scalars {
            match k.as_str() {
                "mem" | "disk" => parts.push(format!("{k}:{}MiB", round2(*v))),
                _ => parts.push(format!("{k}:{}", round2(*v))),
            }
        }
        for (k, v) in &self.ranges {
            let rs: Vec<String> = v.iter().map(|(a, b)| format!("{a}-{b}")).collect();
            parts.push(format!("{k}:[{}]", rs.join(",")));
        }
        for (k, v) in &self.sets {
            parts.push(format!(
                "{k}:{{{}}}",
                v.iter().cloned().collect::<Vec<_>>().join(",")
            ));
        }
        f.write_str(&parts.join(";"))
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_resources_are_checked_like_parsed_ones() {
        let mut r = Resources::default();
        r.scalars.insert("cpus".into(), -100.0);
        assert_eq!(
            r.validate().map_err(|e| e.to_string()),
            Err("resource cpus:-100 is not valid: expected a finite amount of 0 or more".into())
        );
        let mut r = Resources::default();
        r.ranges.insert("ports".into(), vec![(9, 3)]);
        assert_eq!(
            r.validate(),
            Err(InvalidResources::Range {
                kind: "ports".into(),
                start: 9,
                end: 3
            })
        );
        assert_eq!(
            "cpus:1;ports:[3-9]"
                .parse::<Resources>()
                .map(|r| r.validate()),
            Ok(Ok(()))
        );
    }

    #[test]
    fn parses_the_documented_example() {
        let r: Resources = "cpus:4;mem:8GiB;disk:20GiB;ports:[31000-32000]"
            .parse()
            .unwrap();
        assert_eq!(r.scalars["cpus"], 4.0);
        assert_eq!(r.scalars["mem"], 8192.0);
        assert_eq!(r.scalars["disk"], 20480.0);
        assert_eq!(r.ranges["ports"], vec![(31000, 32000)]);
        let again: Resources = r.to_string().parse().unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn custom_scalars_sets_and_units() {
        let r: Resources = "cpus:0.5; mem:512; gpus:2; disk:1TB; devs:{sda,sdb}"
            .parse()
            .unwrap();
        assert_eq!(r.scalars["mem"], 512.0);
        assert_eq!(r.scalars["gpus"], 2.0);
        assert!((r.scalars["disk"] - 1e12 / 1048576.0).abs() < 1e-6);
        assert_eq!(r.sets["devs"].len(), 2);
    }

    fn r(s: &str) -> Resources {
        s.parse().unwrap()
    }

    #[test]
    fn a_unit_on_a_custom_scalar_points_to_mem_and_disk() {
        let e = "memory:64MiB".parse::<Resources>().unwrap_err().to_string();
        assert!(
            e.contains("only mem and disk take units") && e.contains("did you mean mem:64MiB?"),
            "{e}"
        );
        let e = "disks:2GiB".parse::<Resources>().unwrap_err().to_string();
        assert!(e.contains("did you mean disk:2GiB?"), "{e}");
        // Not a size either: the plain message.
        let e = "gpus:many".parse::<Resources>().unwrap_err().to_string();
        assert!(e.contains("\"many\" is not a number"), "{e}");
    }

    #[test]
    fn arithmetic_on_scalars_ranges_and_sets() {
        let a = r("cpus:4;mem:1024;ports:[1000-1009];devs:{a,b,c}");
        let b = r("cpus:1.5;ports:[1002-1003];devs:{b}");
        assert!(a.contains(&b));
        assert!(!b.contains(&a));
        let left = a.minus(&b);
        assert_eq!(left.scalars["cpus"], 2.5);
        assert_eq!(left.ranges["ports"], vec![(1000, 1001), (1004, 1009)]);
        assert_eq!(left.sets["devs"].len(), 2);
        assert_eq!(left.plus(&b), a);
        assert_eq!(a.amount("ports"), 10.0);
        assert!(!a.contains(&r("cpus:5")));
        assert!(!a.contains(&r("gpus:1")));
        assert!(!a.contains(&r("cpus:1;ports:[1009-1010]")));
    }

    #[test]
    fn take_between_gives_at_least_need_and_at_most_want() {
        let free = r("cpus:3;mem:2048;ports:[5000-5009]");
        let need = r("cpus:1;mem:512");
        let want = r("cpus:4;mem:1024;ports:[0-2]");
        let got = free.take_between(&need, &want).unwrap();
        assert_eq!(got.scalars["cpus"], 3.0);
        assert_eq!(got.scalars["mem"], 1024.0);
        assert_eq!(got.ranges["ports"], vec![(5000, 5002)]);
        assert!(free.contains(&got));
        assert!(free.take_between(&r("cpus:4"), &r("cpus:4")).is_none());
    }

    #[test]
    fn errors_name_the_token_and_what_was_expected() {
        for (input, token, says) in [
            ("cpus:4;mem:8GX", "mem:8GX", "unknown unit"),
            ("cpus:four", "cpus:four", "not a number"),
            ("cpus:4;ports:[2-1]", "ports:[2-1]", "runs backwards"),
            ("cpus:4;ports:[1-5,3-9]", "ports:[1-5,3-9]", "overlap"),
            (
                "cpus:4;ports:31000-32000",
                "ports:31000-32000",
                "not a number",
            ),
            ("cpus4", "cpus4", "no ':'"),
            ("cpus:1;cpus:2", "cpus:2", "twice"),
            ("cpus:-1", "cpus:-1", "negative"),
            ("", "", "no resources"),
        ] {
            let e = input.parse::<Resources>().unwrap_err();
            assert_eq!(e.token, token, "{input}");
            assert!(e.to_string().contains(says), "{input}: {e}");
            assert!(e.to_string().contains("expected"), "{e}");
        }
    }
}
