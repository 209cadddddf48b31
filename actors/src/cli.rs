//! Helpers shared by the `actormesh` binary and the examples: durations and logging.

use std::time::Duration;

/// Parses `90s`, `30m`, `24h`, `7d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!(
            "invalid duration {s:?}: expected a whole number followed by s, m, h or d (e.g. 24h)"
        )
    })?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?}, expected s, m, h or d (e.g. 24h)"
            ))
        }
    };
    if secs == 0 {
        return Err(format!("invalid duration {s:?}: must be longer than zero"));
    }
    Ok(Duration::from_secs(secs))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    init_logging_with_default("info");
}

/// Logs to stderr, filtered by `RUST_LOG`, or by `default` when it is unset.
pub fn init_logging_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("5w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").unwrap_err().contains("whole number"));
        assert!(parse_duration("0s")
            .unwrap_err()
            .contains("longer than zero"));
    }
}
