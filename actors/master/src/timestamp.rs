//! Wall-clock times as the operator API shows them: RFC 3339 strings in UTC
//! (`2026-12-01T20:42:59.5Z`), what scripts and `jq` expect. Only in human-readable forms
//! (JSON, YAML): the state store's binary form keeps serde's own encoding of
//! `SystemTime`, so stored records read as before.
//!
//! Use with `#[serde(with = "crate::timestamp")]` on a `SystemTime` and
//! `#[serde(with = "crate::timestamp::option")]` on an `Option<SystemTime>`.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `t` as RFC 3339 in UTC.
pub fn format(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|e| format!("<a time RFC 3339 cannot write: {e}>"))
}

/// An RFC 3339 time, any offset.
pub fn parse(s: &str) -> Result<SystemTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time (e.g. 2026-12-01T20:42:59Z): {e}"))
}

/// What a human-readable form may hold: the RFC 3339 string, or serde's own form (which
/// the API wrote before).
#[derive(Deserialize)]
#[serde(untagged)]
enum Readable {
    Text(String),
    Serde(SystemTime),
}

/// Serializes `t`: RFC 3339 in human-readable forms, serde's own form otherwise.
pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&format(*t))
    } else {
        t.serialize(s)
    }
}

/// Reads what [`serialize`] writes.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    if d.is_human_readable() {
        match Readable::deserialize(d)? {
            Readable::Text(text) => parse(&text).map_err(serde::de::Error::custom),
            Readable::Serde(t) => Ok(t),
        }
    } else {
        SystemTime::deserialize(d)
    }
}

/// The same for `Option<SystemTime>` (`null` for none).
pub mod option {
    use super::*;

    /// Serializes `t` as [`super::serialize`] does, `None` as none.
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) if s.is_human_readable() => s.serialize_some(&format(*t)),
            Some(t) => s.serialize_some(t),
            None => s.serialize_none(),
        }
    }

    /// Reads what [`serialize`] writes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        if d.is_human_readable() {
            match Option::<Readable>::deserialize(d)? {
                Some(Readable::Text(text)) => {
                    parse(&text).map(Some).map_err(serde::de::Error::custom)
                }
                Some(Readable::Serde(t)) => Ok(Some(t)),
                None => Ok(None),
            }
        } else {
            Option::<SystemTime>::deserialize(d)
        }
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Times {
        #[serde(with = "crate::timestamp")]
        at: SystemTime,
        #[serde(with = "crate::timestamp::option")]
        seen: Option<SystemTime>,
        #[serde(with = "crate::timestamp::option")]
        never: Option<SystemTime>,
    }

    fn times() -> Times {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_157_779_500);
        Times {
            at,
            seen: Some(at + Duration::from_secs(1)),
            never: None,
        }
    }

    #[test]
    fn json_shows_rfc3339_in_utc_and_reads_it_back() {
        let json = serde_json::to_value(times()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "at": "2026-12-01T20:42:59.5Z",
                "seen": "2026-12-01T20:43:00.5Z",
                "never": null,
            })
        );
        let back: Times = serde_json::from_value(json).unwrap();
        assert_eq!(back, times());
        // Another offset is the same instant.
        let other: Times = serde_json::from_str(
            r#"{"at": "2026-12-01T21:42:59.5+01:00", "seen": null, "never": null}"#,
        )
        .unwrap();
        assert_eq!(other.at, times().at);
    }

    #[test]
    fn the_binary_form_is_serde_s_own_so_stored_records_read_as_before() {
        #[derive(Serialize, Deserialize)]
        struct Plain {
            at: SystemTime,
            seen: Option<SystemTime>,
            never: Option<SystemTime>,
        }
        let t = times();
        let ours = actormesh_transport::codec::encode(&t).unwrap();
        let plain = actormesh_transport::codec::encode(&Plain {
            at: t.at,
            seen: t.seen,
            never: t.never,
        })
        .unwrap();
        assert_eq!(ours, plain);
        let back: Times = actormesh_transport::codec::decode(&ours).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn json_in_the_old_form_still_reads_and_a_bad_time_names_what_is_expected() {
        let old: Times = serde_json::from_str(
            r#"{"at": {"secs_since_epoch": 1796157779, "nanos_since_epoch": 500000000}, "seen": null, "never": null}"#,
        )
        .unwrap();
        assert_eq!(old.at, times().at);
        let bad =
            serde_json::from_str::<Times>(r#"{"at": "yesterday", "seen": null, "never": null}"#)
                .unwrap_err()
                .to_string();
        assert!(bad.contains("is not an RFC 3339 time"), "{bad}");
    }
}
