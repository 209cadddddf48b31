//! How master state sits in ZooKeeper, without a server: the address syntax, the znode
//! paths of keys, and the bytes of a znode (a value inline, or a pointer to its chunks).
//!
//! Under the chroot:
//! - `/tables/<table>/<key>`: one znode per object; its ZooKeeper version + 1 is the
//!   object's version. Keys are escaped (`%2F` for `/`), since a znode name cannot hold
//!   `/`.
//! - `/chunks/<key>@<generation>/<i>`: the pieces of a value too large for one request,
//!   written before the batch that points at them (copy-on-write); the batch flips the
//!   object's znode to the new pointer, and the old chunks are deleted after it.
//! - `/txn`: set in every batch with its expected version, so that two writers never
//!   interleave and a batch whose reply was lost can be told applied or not.

use std::time::Duration;

use super::super::{StoreError, Table};

/// Largest value kept inline in its znode; larger ones are chunked.
pub const INLINE_MAX: usize = 256 * 1024;
/// Size of one chunk.
pub const CHUNK: usize = 256 * 1024;
/// Largest sum of inline values in one batch: the whole request must stay under
/// ZooKeeper's 1 MiB `jute.maxbuffer`, with room for paths and headers.
pub const BATCH_INLINE_MAX: usize = 640 * 1024;

/// Where the store is: `host:port[,host:port...]/chroot`, as `--zk` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkAddress {
    /// `host:port,host:port`.
    pub servers: String,
    /// The chroot, e.g. `/actormesh`.
    pub chroot: String,
}

fn bad(spec: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        path: format!("zk://{spec}").into(),
        reason: format!(
            "{why} (expected host:port[,host:port...]/chroot, e.g. 127.0.0.1:2181,127.0.0.1:2182/actormesh)"
        ),
    }
}

impl ZkAddress {
    /// Parses `--zk`; the error names what is wrong and what is expected.
    pub fn parse(spec: &str) -> Result<Self, StoreError> {
        let (servers, chroot) = match spec.find('/') {
            Some(i) => (&spec[..i], &spec[i..]),
            None => {
                return Err(bad(
                    spec,
                    "no chroot: every master state lives under one path",
                ))
            }
        };
        if servers.is_empty() {
            return Err(bad(spec, "no server"));
        }
        for s in servers.split(',') {
            let Some((host, port)) = s.rsplit_once(':') else {
                return Err(bad(spec, format!("server {s:?} has no port")));
            };
            if host.is_empty() {
                return Err(bad(spec, format!("server {s:?} has no host")));
            }
            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                return Err(bad(spec, format!("server {s:?}: {port:?} is not a port")));
            }
        }
        if chroot == "/" || chroot.ends_with('/') || chroot.contains("//") {
            return Err(bad(
                spec,
                format!("chroot {chroot:?} must name a node below / with no trailing or doubled /"),
            ));
        }
        if chroot
            .split('/')
            .skip(1)
            .any(|part| part == "." || part == ".." || part.chars().any(|c| c.is_control()))
        {
            return Err(bad(
                spec,
                format!("chroot {chroot:?} holds . or .. or a control character"),
            ));
        }
        Ok(Self {
            servers: servers.to_string(),
            chroot: chroot.to_string(),
        })
    }

    /// How it is shown in errors.
    pub fn shown(&self) -> String {
        format!("zk://{}{}", self.servers, self.chroot)
    }
}

/// Digest credentials `user:password`, as the file `--zk-auth-file` holds them.
pub fn parse_auth(text: &str) -> Result<String, String> {
    let text = text.trim();
    match text.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(text.to_string()),
        _ => Err("expected one line user:password (ZooKeeper digest credentials)".into()),
    }
}

/// The default ZooKeeper session timeout of a master.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// The znode holding `key` of `table`.
pub fn key_path(table: Table, key: &str) -> String {
    format!("/tables/{}/{}", table.name(), escape(key))
}

/// The directory of a table.
pub fn table_path(table: Table) -> String {
    format!("/tables/{}", table.name())
}

/// The directory of one generation of a key's chunks.
pub fn chunk_dir(table: Table, key: &str, generation: u64) -> String {
    format!("/chunks/{}.{}@{generation}", table.name(), escape(key))
}

/// A znode name for `key`: bytes outside `[A-Za-z0-9_-]` as `%XX`.
pub fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The key a znode name stands for, if it is one [`escape`] made.
pub fn unescape(name: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(name.len());
    let mut it = name.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// What a key's znode holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The value itself.
    Inline(Vec<u8>),
    /// The value is in `count` chunks of generation `generation`, `len` bytes in all.
    Chunked {
        /// The generation (its chunk directory).
        generation: u64,
        /// How many chunks.
        count: u32,
        /// The value's length.
        len: u64,
    },
}

const TAG_INLINE: u8 = 0;
const TAG_CHUNKED: u8 = 1;

impl Stored {
    /// The znode's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Stored::Inline(v) => {
                let mut out = Vec::with_capacity(v.len() + 1);
                out.push(TAG_INLINE);
                out.extend_from_slice(v);
                out
            }
            Stored::Chunked {
                generation,
                count,
                len,
            } => {
                let mut out = vec![TAG_CHUNKED];
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out
            }
        }
    }

    /// Reads a znode's bytes; `None` if they are not ours.
    pub fn decode(data: &[u8]) -> Option<Self> {
        match data.split_first()? {
            (&TAG_INLINE, rest) => Some(Stored::Inline(rest.to_vec())),
            (&TAG_CHUNKED, rest) if rest.len() == 20 => Some(Stored::Chunked {
                generation: u64::from_be_bytes(rest[0..8].try_into().ok()?),
                count: u32::from_be_bytes(rest[8..12].try_into().ok()?),
                len: u64::from_be_bytes(rest[12..20].try_into().ok()?),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_name_what_is_wrong() {
        let a = ZkAddress::parse("127.0.0.1:2181,127.0.0.1:2182/actormesh").unwrap();
        assert_eq!(a.servers, "127.0.0.1:2181,127.0.0.1:2182");
        assert_eq!(a.chroot, "/actormesh");
        assert_eq!(ZkAddress::parse("zk:1/a/b").unwrap().chroot, "/a/b");
        for (spec, says) in [
            ("127.0.0.1:2181", "no chroot"),
            ("/actormesh", "no server"),
            ("127.0.0.1/actormesh", "has no port"),
            ("127.0.0.1:99999/a", "is not a port"),
            (":2181/a", "has no host"),
            ("h:1/", "must name a node"),
            ("h:1/a/", "must name a node"),
            ("h:1/a//b", "must name a node"),
            ("h:1/a/../b", "holds . or .."),
        ] {
            let e = ZkAddress::parse(spec).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains("expected host:port"),
                "{spec}: {e}"
            );
        }
        assert!(parse_auth("am:secret\n").is_ok());
        assert!(parse_auth("am:").is_err() && parse_auth("nocolon").is_err());
    }

    #[test]
    fn keys_escape_into_one_znode_name_and_back() {
        for key in [
            "a1",
            "deployment/default/web",
            "authz/ns/x.y",
            "%",
            "..",
            "ü",
        ] {
            let e = escape(key);
            assert!(!e.contains('/') && e != "." && e != "..", "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(key));
        }
        assert_eq!(escape("deployment/a"), "deployment%2Fa");
        assert_eq!(unescape("%zz"), None);
    }

    #[test]
    fn a_znode_holds_a_value_or_a_pointer_to_its_chunks() {
        for s in [
            Stored::Inline(b"v".to_vec()),
            Stored::Inline(Vec::new()),
            Stored::Chunked {
                generation: 7,
                count: 3,
                len: 700_000,
            },
        ] {
            assert_eq!(Stored::decode(&s.encode()), Some(s));
        }
        assert_eq!(Stored::decode(&[]), None);
        assert_eq!(Stored::decode(&[9, 1]), None);
        assert_eq!(Stored::decode(&[1, 0]), None);
    }
}
