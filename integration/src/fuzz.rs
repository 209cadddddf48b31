//! Fuzz targets: every decoder that takes input from the network or an operator, as a
//! function of bytes that must not panic whatever the bytes (a decoder refuses bad input
//! with an error; it never crashes, hangs or allocates without bound).
//!
//! Two drivers run them:
//! - `scripts/fuzz` runs coverage-guided campaigns with AFL++ through cargo-afl (stable
//!   Rust), from `integration/fuzz` (a package outside the workspace, so CI never builds
//!   AFL), starting from the kept corpus in `integration/fuzz/corpus/<target>`;
//! - `integration/tests/fuzz_replay.rs`, in every test run, replays the kept corpus and
//!   runs a bounded number of structured-random cases per target: mutations (bit flips,
//!   cuts, splices, repeated and dropped bytes) of valid encodings from [`seeds`].

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use actormesh::mesh::authz::{AuthorizationPolicySpec, AuthzDefault, ServiceAuthz};
use actormesh::mesh::balance::{BalanceConfig, Locality};
use actormesh::mesh::protocol::Push;
use actormesh::mesh::route::RouteTable;
use actormesh::protocol::BootstrapRequest;
use actormesh_runtime::wire;
use actormesh_transport::codec;
use actormesh_transport::frame::FrameDecoder;
use actormesh_transport::pki::CertificateAuthority;
use actormesh_transport::SpiffeId;

/// A target: its name (the corpus directory) and the function under test.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("frames", frames),
    ("lane", lane),
    ("control", control),
    ("push", push),
    ("bootstrap", bootstrap),
    ("join_token", join_token),
    ("csr", csr),
    ("manifest", manifest),
    ("authz", authz),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Length-prefixed frames, as a QUIC stream delivers them, in pieces.
pub fn frames(data: &[u8]) {
    let mut d = FrameDecoder::new(64 * 1024);
    for piece in data.chunks(7) {
        d.extend(piece);
        while let Ok(Some(frame)) = d.next_frame() {
            lane(&frame);
        }
    }
}

/// A lane's frames (calls and their metadata blocks), stream headers and replies, in
/// every protocol version.
pub fn lane(data: &[u8]) {
    for version in [1, 2, 3] {
        if let Ok(f) = wire::decode_lane(data, version) {
            if let Some(meta) = f.meta {
                let _ = wire::validate_meta(meta);
            }
        }
    }
    let _ = wire::decode_header(data);
    let _ = wire::decode_reply(data);
}

/// Control-stream messages (`Hello`, `LaneDone`, …).
pub fn control(data: &[u8]) {
    let _ = codec::decode::<wire::Control>(data);
}

/// A registry push, decoded and applied to a route table (its checks refuse bad data).
pub fn push(data: &[u8]) {
    let Ok(p) = codec::decode::<Push>(data) else {
        return;
    };
    let table = RouteTable::new(
        Locality {
            node: "spiffe://fuzz.local/node/n".into(),
            zone: None,
        },
        BalanceConfig::default(),
        |e| e.id.clone(),
    );
    let _ = table.apply(&p, 0);
}

/// What the bootstrap port reads before any TLS identity: join, locate, client requests.
pub fn bootstrap(data: &[u8]) {
    let _ = codec::decode::<BootstrapRequest>(data);
}

/// Join tokens as typed by an operator or sent by an agent.
pub fn join_token(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<actormesh::token::JoinToken>();
    }
}

fn fuzz_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::generate("fuzz.local", Duration::from_secs(3600)).expect("a CA")
    })
}

/// Certificate signing requests, as the master signs them for joining agents and clients;
/// and PEM trust bundles, as an agent takes them from a heartbeat answer or its `ca.pem`.
pub fn csr(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let id = SpiffeId::node("fuzz.local", "n").expect("an identity");
        let _ = fuzz_ca().sign_csr(s, &id, Duration::from_secs(60));
        if let Ok(bundle) = actormesh::transport::trust::parse_bundle(s) {
            let _ = actormesh::transport::trust::digest(&bundle);
        }
    }
}

/// Manifests of every kind, as YAML and as JSON.
pub fn manifest(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        for file in ["m.yaml", "m.json"] {
            let _ = actormesh_master::manifest::parse_object(Path::new(file), s);
        }
    }
}

/// An AuthorizationPolicy spec as pushed (JSON), validated and compiled.
pub fn authz(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<AuthorizationPolicySpec>(data) else {
        return;
    };
    if spec.validate().is_ok() {
        let policies = [actormesh::mesh::registry::Applied {
            object: "shop/p".to_string(),
            spec,
        }];
        let c = ServiceAuthz::new(
            &"shop/web".parse().expect("a name"),
            &policies,
            AuthzDefault::Deny,
        );
        let m = actormesh::Metadata::new().with("k", "a");
        let _ = c.decide(&actormesh::mesh::authz::Facts {
            principal: "fuzz.local/ns/shop/sa/web",
            namespace: Some("shop"),
            node: "fuzz.local/node/n",
            message: "shop.Get/v1",
            metadata: &m,
        });
    }
}

/// Valid inputs of `target`, to start mutations from (and to seed AFL's corpus).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "frames" => {
            let mut b = Vec::new();
            for body in [&b"hello"[..], &[0u8; 40][..]] {
                actormesh_transport::frame::push_frame(&mut b, body, 1 << 20).expect("a frame");
            }
            vec![b]
        }
        "lane" => {
            let mut tell = Vec::new();
            wire::encode_tell(&mut tell, "demo.Echo/v1", &"hi".to_string()).expect("a tell");
            let mut ask = Vec::new();
            wire::encode_ask(&mut ask, 7, 5000, "demo.Echo/v1", &"hi".to_string()).expect("an ask");
            let mut reply = Vec::new();
            wire::encode_reply_ok(&mut reply, 7, &"hi".to_string()).expect("a reply");
            vec![tell, ask, reply]
        }
        "control" => vec![codec::encode(&wire::Control::LaneDone { id: 3 }).expect("control")],
        "push" => {
            let json = r#"{"version":3,"kind":"Full","services":[{"name":{"namespace":"shop","name":"web"},"labels":{},"balancer":"p2c","locality":true,"endpoints":[{"id":"e1","node":"spiffe://fuzz.local/node/a","addr":"127.0.0.1:7000","actor":"web-1","version":"v1","labels":{"version":"v1"},"weight":1,"zone":null}],"traffic":{},"hosts":["spiffe://fuzz.local/node/a"]}],"removed":[],"revoked":[{"id":"spiffe://fuzz.local/node/gone","until_ms":5}],"mesh":{"authz_default":"allow","hide_policy_names":false}}"#;
            let p: Push = serde_json::from_str(json).expect("a push");
            vec![codec::encode(&p).expect("encoded")]
        }
        "bootstrap" => vec![codec::encode(&BootstrapRequest::Locate).expect("locate")],
        "join_token" => vec![
            format!("am1.abcdef.{}.{}", "s".repeat(32), "0".repeat(64)).into_bytes(),
        ],
        "csr" => {
            let key = actormesh_transport::pki::NodeKey::generate().expect("a key");
            let id = SpiffeId::node("fuzz.local", "n").expect("an identity");
            vec![key.csr(&id).expect("a csr").into_bytes()]
        }
        "manifest" => vec![
            b"kind: Deployment\nname: web\nspec:\n  actor: echo\n  version: v1\n  replicas: 2\n  resources: { need: \"cpus:1\" }\n  service: {}\n".to_vec(),
            b"kind: Route\nname: r\nspec:\n  service: web\n  rules:\n    - match: { message: { glob: \"a.*\" } }\n      split: [ { subset: v1, weight: 100 } ]\n".to_vec(),
            b"kind: AuthorizationPolicy\nname: p\nspec:\n  action: DENY\n  rules: [ { when: [ { key: k, values: [v] } ] } ]\n".to_vec(),
        ],
        "authz" => vec![
            br#"{"service":"web","action":"ALLOW","rules":[{"from":[{"source":{"principals":["*/sa/web"],"not_nodes":["n?"]}}],"to":[{"operation":{"messages":["shop.*"]}}],"when":[{"key":"k","values":["a*"]}]}]}"#.to_vec(),
        ],
        _ => Vec::new(),
    }
}

/// A small deterministic source for the structured-random cases (SplitMix64).
#[derive(Debug, Clone)]
pub struct Cases(u64);

impl Cases {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A mutation of `seed`: bit flips, a cut, a splice of random bytes, a repeated or
    /// dropped run, or an interesting value (0, 0xff, lengths) written over four bytes.
    pub fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let len = b.len();
            match self.below(6) {
                0 if len > 0 => {
                    let i = self.below(len);
                    b[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => b.truncate(self.below(len)),
                2 => {
                    let at = self.below(len + 1);
                    let n = self.below(16);
                    let junk: Vec<u8> = (0..n).map(|_| self.next() as u8).collect();
                    b.splice(at..at, junk);
                }
                3 if len > 1 => {
                    let from = self.below(len);
                    let to = (from + 1 + self.below(8)).min(len);
                    let run = b[from..to].to_vec();
                    b.splice(from..from, run);
                }
                4 if len > 1 => {
                    let from = self.below(len);
                    let to = (from + 1 + self.below(8)).min(len);
                    b.drain(from..to);
                }
                _ if len >= 4 => {
                    let at = self.below(len - 3);
                    let v: u32 = [0, u32::MAX, 0x7fff_ffff, 1 << 20, 255, 256][self.below(6)];
                    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                _ => b.push(self.next() as u8),
            }
        }
        b
    }

    /// Random bytes, up to `max` long.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}
