//! The one place where actormesh turns values into bytes and back.
//!
//! bincode 2 is unmaintained, so every encode and decode in the workspace goes through
//! these functions: swapping the format later touches this file only. Every decode runs
//! with a hard size limit, so a hostile length claim costs a typed error, never an
//! unbounded allocation.

use serde::{de::DeserializeOwned, Serialize};

/// The most memory a single decode may claim (strings, byte buffers, sequences).
///
/// No frame can be larger than [`crate::frame::MAX_FRAME_LIMIT`], and this limit equals it,
/// so a well-formed value always fits.
pub const DECODE_LIMIT: usize = 16 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be serialized (for example a map with non-string keys in a
    /// format that needs them, or a custom `Serialize` that failed).
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// The bytes do not hold a valid value of the expected type.
    #[error("cannot decode {type_name}: {reason}")]
    Decode {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// What bincode reported.
        reason: String,
    },
    /// Decoding would claim more memory than [`DECODE_LIMIT`].
    #[error("cannot decode {type_name}: it claims more than the {DECODE_LIMIT}-byte decode limit")]
    LimitExceeded {
        /// The Rust type that was expected.
        type_name: &'static str,
    },
    /// The value decoded but bytes were left over, so the frame does not hold what the
    /// sender and receiver agreed on (usually two versions of one message type).
    #[error("cannot decode {type_name}: {extra} trailing bytes after the value")]
    TrailingBytes {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
}

/// Appends the encoding of `value` to `buf`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, buf, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Encodes `value` into a new buffer.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::new();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Decodes exactly one `T` from `bytes`; leftover bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let type_name = std::any::type_name::<T>();
    match bincode::serde::decode_from_slice::<T, _>(bytes, config()) {
        Ok((value, used)) if used == bytes.len() => Ok(value),
        Ok((_, used)) => Err(CodecError::TrailingBytes {
            type_name,
            extra: bytes.len() - used,
        }),
        Err(bincode::error::DecodeError::LimitExceeded) => {
            Err(CodecError::LimitExceeded { type_name })
        }
        Err(e) => Err(CodecError::Decode {
            type_name,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = (7u32, "seven".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u32, String, Vec<u8>)>(&bytes).unwrap(), v);
    }

    #[test]
    fn huge_length_claim_is_refused_without_allocating() {
        // A varint length prefix claiming u64::MAX/2 bytes for a String.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        match decode::<String>(&bytes) {
            Err(CodecError::LimitExceeded { .. }) => {}
            other => panic!("expected LimitExceeded, got {other:?}"),
        }
        // Sequences go through serde, which caps its preallocation; the claim still fails.
        assert!(decode::<Vec<u64>>(&bytes).is_err());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&5u8).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u8>(&bytes),
            Err(CodecError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(
            decode::<String>(&[0x03, 0xff, 0xfe, 0xfd]),
            Err(CodecError::Decode { .. })
        ));
    }
}
