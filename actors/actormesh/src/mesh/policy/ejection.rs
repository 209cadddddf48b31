//! How much of a service outlier detection may eject, and for how long, as Envoy's:
//! at most `max_ejection_percent` of the endpoints, but always at least one (so three
//! replicas still eject one), and never below `min_healthy_percent` healthy; the n-th
//! ejection in a row lasts n × `base_ejection`, up to `max_ejection`.

use std::time::Duration;

/// Outlier detection's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Errors in a row that eject an endpoint.
    pub consecutive_errors: u32,
    /// How often ejections are reconsidered (ejected endpoints whose time is over return).
    pub interval: Duration,
    /// The first ejection's length; the n-th in a row lasts n times as long.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// The most of the service's endpoints ejected at once, in percent (at least one).
    pub max_ejection_percent: u32,
    /// The least of the service's endpoints kept healthy, in percent; it always holds.
    pub min_healthy_percent: u32,
}

impl Default for OutlierConfig {
    /// Envoy's: 5 errors in a row, 10 s interval, 30 s base ejection (300 s at most), 10 %
    /// ejected at most; 50 % healthy at least (Envoy's panic threshold).
    fn default() -> Self {
        Self {
            consecutive_errors: 5,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
            min_healthy_percent: 50,
        }
    }
}

impl OutlierConfig {
    /// Whether one more endpoint may be ejected from a service of `total` endpoints of
    /// which `ejected` are ejected now.
    pub fn may_eject(&self, total: usize, ejected: usize) -> bool {
        if ejected >= total {
            return false;
        }
        let cap = (total * self.max_ejection_percent as usize / 100).max(1);
        let healthy_after = total - ejected - 1;
        ejected < cap && healthy_after * 100 >= total * self.min_healthy_percent as usize
    }

    /// How long the `times`-th ejection in a row lasts (the first is 1).
    pub fn ejection(&self, times: u32) -> Duration {
        self.base_ejection
            .saturating_mul(times.max(1))
            .min(self.max_ejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_one_endpoint_may_be_ejected() {
        let c = OutlierConfig::default();
        // 10 % of 3 is 0: Envoy still ejects one.
        assert!(c.may_eject(3, 0));
        assert!(!c.may_eject(3, 1));
    }

    #[test]
    fn at_most_the_percentage_is_ejected() {
        let c = OutlierConfig::default();
        assert!(c.may_eject(100, 9));
        assert!(!c.may_eject(100, 10));
    }

    #[test]
    fn min_healthy_always_holds() {
        let c = OutlierConfig {
            max_ejection_percent: 100,
            min_healthy_percent: 50,
            ..OutlierConfig::default()
        };
        // One replica: ejecting it would leave none healthy.
        assert!(!c.may_eject(1, 0));
        assert!(c.may_eject(4, 1), "2 of 4 stay healthy");
        assert!(!c.may_eject(4, 2), "1 of 4 would be under 50 %");
    }

    #[test]
    fn ejections_in_a_row_grow_linearly_up_to_the_max() {
        let c = OutlierConfig::default();
        assert_eq!(c.ejection(1), Duration::from_secs(30));
        assert_eq!(c.ejection(3), Duration::from_secs(90));
        assert_eq!(c.ejection(50), Duration::from_secs(300));
    }
}
