//! Durations as people write them in manifests and flags: `250ms`, `90s`, `30m`, `24h`,
//! `7d`, or a bare number of seconds.

use std::time::Duration;

/// A duration did not parse; each variant says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No whole number at the start.
    #[error(
        "invalid duration {0:?}: expected a whole number followed by ms, s, m, h or d (e.g. 24h)"
    )]
    NotANumber(String),
    /// More seconds than a duration holds.
    #[error("invalid duration {0:?}: too long")]
    TooLong(String),
    /// A unit other than ms, s, m, h or d.
    #[error(
        "invalid duration {input:?}: unknown unit {unit:?}, expected ms, s, m, h or d (e.g. 24h)"
    )]
    UnknownUnit {
        /// What was given.
        input: String,
        /// The unit in it.
        unit: String,
    },
    /// Zero, where a duration must be longer.
    #[error("invalid duration {0:?}: must be longer than zero")]
    Zero(String),
}

/// Parses `250ms`, `90s`, `30m`, `24h`, `7d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_string()))?;
    let secs = |mul: u64| {
        n.checked_mul(mul)
            .map(Duration::from_secs)
            .ok_or_else(|| DurationError::TooLong(s.to_string()))
    };
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => secs(60)?,
        "h" => secs(3600)?,
        "d" => secs(86400)?,
        other => {
            return Err(DurationError::UnknownUnit {
                input: s.to_string(),
                unit: other.to_string(),
            })
        }
    };
    if d.is_zero() {
        return Err(DurationError::Zero(s.to_string()));
    }
    Ok(d)
}

/// `d` as [`parse_duration`] reads it back: the largest unit that divides it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s.is_multiple_of(size) {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

/// Serde for a `Duration` written as text (`with = "actormesh::duration::text"`).
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes it as [`super::format_duration`] does.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads it as [`super::parse_duration`] does; its error says what was expected.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// [`text`] for an optional duration.
pub mod opt_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes it as [`super::format_duration`] does.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads it as [`super::parse_duration`] does.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_durations_read_back() {
        for ms in [1, 250, 1_000, 90_000, 60_000, 3_600_000, 86_400_000, 1_500] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms} ms");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
