//! What a Route decides for one call, before an endpoint is picked: the first rule that
//! matches, the subset its split draws, the faults it injects and whether the call is
//! mirrored. A plain core: the random numbers come from the caller.

use std::time::Duration;

use super::spec::{AbortKind, RouteSpec, Rule};
use crate::mesh::balance::Random;

/// The decision for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<'a> {
    /// The index of the rule that matched (`None`: no rule did; the whole service, no policy).
    pub rule: Option<usize>,
    /// The subset drawn by the rule's split (`None`: the whole service).
    pub subset: Option<&'a str>,
    /// A delay to wait before the call.
    pub delay: Option<Duration>,
    /// An error to answer instead of making the call.
    pub abort: Option<AbortKind>,
    /// A subset that gets a copy of the call (its reply discarded).
    pub mirror: Option<&'a str>,
}

/// Whether an event of `percent` (0 to 100, fractions allowed) happens: one draw at a
/// resolution of a millionth.
fn happens(percent: f64, random: &mut impl Random) -> bool {
    (random.below(100_000_000) as f64) < percent * 1_000_000.0
}

/// The subset a split draws: weights summing to 100, one draw.
fn draw<'a>(rule: &'a Rule, random: &mut impl Random) -> Option<&'a str> {
    if rule.split.is_empty() {
        return None;
    }
    let mut point = random.below(100) as u32;
    for s in &rule.split {
        if point < s.weight {
            return Some(&s.subset);
        }
        point -= s.weight;
    }
    // Weights are validated to sum to 100; this is the last subset for any rounding.
    rule.split.last().map(|s| s.subset.as_str())
}

/// The decision of `route` for a call of `message` with `metadata` (looked up by key)
/// from `workload`.
pub fn decide<'a, 'm>(
    route: &'a RouteSpec,
    message: &str,
    metadata: impl Fn(&str) -> Option<&'m str> + Copy,
    workload: Option<&str>,
    random: &mut impl Random,
) -> Decision<'a> {
    let Some((i, rule)) = route
        .rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches.matches(message, metadata, workload))
    else {
        return Decision {
            rule: None,
            subset: None,
            delay: None,
            abort: None,
            mirror: None,
        };
    };
    let fault = rule.fault.as_ref();
    Decision {
        rule: Some(i),
        subset: draw(rule, random),
        delay: fault
            .and_then(|f| f.delay.as_ref())
            .filter(|d| happens(d.percent, random))
            .map(|d| d.fixed),
        abort: fault
            .and_then(|f| f.abort.as_ref())
            .filter(|a| happens(a.percent, random))
            .map(|a| a.error),
        mirror: rule
            .mirror
            .as_ref()
            .filter(|m| happens(m.percent, random))
            .map(|m| m.subset.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::mesh::balance::SplitMix64;
    use crate::mesh::policy::spec::{
        AbortFault, DelayFault, Fault, Mirror, NameMatch, RuleMatch, Split,
    };

    fn split(parts: &[(&str, u32)]) -> Vec<Split> {
        parts
            .iter()
            .map(|(s, w)| Split {
                subset: s.to_string(),
                weight: *w,
            })
            .collect()
    }

    fn none(_: &str) -> Option<&'static str> {
        None
    }

    const CALLS: usize = 10_000;

    #[test]
    fn a_90_10_split_lands_within_2_points_over_10000_calls() {
        let route = RouteSpec {
            service: "ratings".into(),
            rules: vec![Rule {
                split: split(&[("v1", 90), ("v2", 10)]),
                ..Rule::default()
            }],
        };
        for seed in [1, 2, 3] {
            let mut r = SplitMix64(seed);
            let mut count: BTreeMap<&str, usize> = BTreeMap::new();
            for _ in 0..CALLS {
                *count
                    .entry(decide(&route, "m", none, None, &mut r).subset.unwrap())
                    .or_default() += 1;
            }
            let v2 = count["v2"] as f64 * 100.0 / CALLS as f64;
            assert!((8.0..=12.0).contains(&v2), "seed {seed}: v2 got {v2} %");
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let route = RouteSpec {
            service: "ratings".into(),
            rules: vec![
                Rule {
                    matches: RuleMatch {
                        message: Some(NameMatch::Exact("shop.Get/v2".into())),
                        ..RuleMatch::default()
                    },
                    split: split(&[("v2", 100)]),
                    ..Rule::default()
                },
                Rule {
                    split: split(&[("v1", 100)]),
                    ..Rule::default()
                },
            ],
        };
        let mut r = SplitMix64(1);
        let d = decide(&route, "shop.Get/v2", none, None, &mut r);
        assert_eq!((d.rule, d.subset), (Some(0), Some("v2")));
        let d = decide(&route, "shop.Get/v1", none, None, &mut r);
        assert_eq!((d.rule, d.subset), (Some(1), Some("v1")));
        let only = RouteSpec {
            service: "ratings".into(),
            rules: vec![route.rules[0].clone()],
        };
        assert_eq!(decide(&only, "other", none, None, &mut r).rule, None);
    }

    #[test]
    fn fault_and_mirror_rates_fall_within_tolerance_over_10000_calls() {
        let route = RouteSpec {
            service: "ratings".into(),
            rules: vec![Rule {
                fault: Some(Fault {
                    delay: Some(DelayFault {
                        fixed: Duration::from_millis(5),
                        percent: 10.0,
                    }),
                    abort: Some(AbortFault {
                        error: AbortKind::Unavailable,
                        percent: 2.5,
                    }),
                }),
                mirror: Some(Mirror {
                    subset: "shadow".into(),
                    percent: 30.0,
                }),
                ..Rule::default()
            }],
        };
        let mut r = SplitMix64(42);
        let (mut delayed, mut aborted, mut mirrored) = (0, 0, 0);
        for _ in 0..CALLS {
            let d = decide(&route, "m", none, None, &mut r);
            delayed += usize::from(d.delay == Some(Duration::from_millis(5)));
            aborted += usize::from(d.abort == Some(AbortKind::Unavailable));
            mirrored += usize::from(d.mirror == Some("shadow"));
        }
        let pct = |n: usize| n as f64 * 100.0 / CALLS as f64;
        assert!(
            (9.0..=11.0).contains(&pct(delayed)),
            "delayed {} %",
            pct(delayed)
        );
        assert!(
            (2.0..=3.0).contains(&pct(aborted)),
            "aborted {} %",
            pct(aborted)
        );
        assert!(
            (28.5..=31.5).contains(&pct(mirrored)),
            "mirrored {} %",
            pct(mirrored)
        );
    }

    /// Draws 0, 1, 2, ... 99 from `below(100)`, in turn.
    struct Sweep(u128);

    impl Random for Sweep {
        fn next_u64(&mut self) -> u64 {
            let i = self.0 % 100;
            self.0 += 1;
            // The smallest value whose multiply-shift by 100 gives i.
            (i << 64).div_ceil(100) as u64
        }
    }

    #[test]
    fn every_point_of_a_split_goes_to_exactly_one_subset() {
        let rule = Rule {
            split: split(&[("a", 90), ("b", 7), ("c", 3)]),
            ..Rule::default()
        };
        let mut sweep = Sweep(0);
        let mut count: BTreeMap<&str, u32> = BTreeMap::new();
        for _ in 0..100 {
            *count.entry(draw(&rule, &mut sweep).unwrap()).or_default() += 1;
        }
        assert_eq!(count, [("a", 90), ("b", 7), ("c", 3)].into());
    }

    #[test]
    fn shares_of_0_and_100_are_exact() {
        let mut r = SplitMix64(9);
        assert!((0..CALLS).all(|_| happens(100.0, &mut r)));
        assert!((0..CALLS).all(|_| !happens(0.0, &mut r)));
    }
}
