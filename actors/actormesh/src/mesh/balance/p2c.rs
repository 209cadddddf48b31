//! Least request by power of two choices, weighed by peak-EWMA latency (Linkerd's default):
//! pick two endpoints at random and take the cheaper, where an endpoint's cost is its
//! latency estimate times its calls in flight plus one ([`super::EndpointState::cost`]).
//! Two random choices avoid the herd that "always the least loaded" makes when many
//! callers see the same loads.

use super::rng::Random;

/// Picks the cheaper of two random endpoints among `n`; `cost(p)` gives a position's cost.
/// If `admit` refuses both, the first position from a random start that it accepts.
pub fn pick(
    n: usize,
    random: &mut impl Random,
    cost: impl Fn(usize) -> f64,
    mut admit: impl FnMut(usize) -> bool,
) -> Option<usize> {
    match n {
        0 => return None,
        1 => return admit(0).then_some(0),
        _ => {}
    }
    let a = random.below(n);
    let mut b = random.below(n - 1);
    if b >= a {
        b += 1;
    }
    let (first, second) = if cost(b) < cost(a) { (b, a) } else { (a, b) };
    if admit(first) {
        return Some(first);
    }
    if admit(second) {
        return Some(second);
    }
    let start = random.below(n);
    (0..n).map(|k| (start + k) % n).find(|&p| admit(p))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mesh::balance::{Admission, EndpointState, HealthPolicy, Outcome, SplitMix64};

    const DECAY: Duration = Duration::from_secs(10);

    #[test]
    fn an_endpoint_ten_times_slower_gets_under_fifteen_percent() {
        let states: Vec<EndpointState> = (0..3)
            .map(|_| EndpointState::new(Duration::from_millis(1), 0))
            .collect();
        let latency = |p: usize| Duration::from_millis(if p == 2 { 10 } else { 1 });
        let mut random = SplitMix64(42);
        let mut now = 0u64;
        let mut counts = [0u32; 3];
        // Three callers at a time: each pick sees the others' calls in flight.
        let mut flying: Vec<(usize, u64)> = Vec::new();
        for _ in 0..10_000 {
            let p = pick(3, &mut random, |p| states[p].cost(now, DECAY), |_| true).unwrap();
            counts[p] += 1;
            states[p].start();
            flying.push((p, now + latency(p).as_nanos() as u64));
            if flying.len() == 3 {
                flying.sort_by_key(|f| f.1);
                let (done, at) = flying.remove(0);
                now = now.max(at);
                states[done].finish(
                    Admission::Ready,
                    Outcome::Success,
                    Some(latency(done)),
                    now,
                    DECAY,
                    &HealthPolicy::default(),
                );
            }
        }
        let slow = f64::from(counts[2]) / 100.0;
        assert!(slow < 15.0, "the slow endpoint got {slow} % ({counts:?})");
        assert!(counts[0] > 3000 && counts[1] > 3000, "{counts:?}");
    }

    #[test]
    fn the_two_choices_are_distinct_and_refusals_fall_back() {
        let mut random = SplitMix64(1);
        // Equal costs, the first of the two is taken: both positions come up.
        let mut seen = [false; 2];
        for _ in 0..100 {
            seen[pick(2, &mut random, |_| 1.0, |_| true).unwrap()] = true;
        }
        assert_eq!(seen, [true, true]);
        for _ in 0..100 {
            assert_eq!(pick(5, &mut random, |_| 1.0, |p| p == 3), Some(3));
        }
        assert_eq!(pick(5, &mut random, |_| 1.0, |_| false), None);
    }
}
