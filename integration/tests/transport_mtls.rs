//! Handshakes between real endpoints on loopback: each refusal names its reason.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use actormesh::transport::pki::{CertificateAuthority, Credentials};
use actormesh::transport::{
    Endpoint, EndpointConfig, Refusal, RefusedBy, SpiffeId, TransportError,
};
use actormesh_integration::pki::TestPki;

fn config() -> EndpointConfig {
    let mut c = EndpointConfig::new("127.0.0.1:0".parse().unwrap());
    c.handshake_timeout = Duration::from_secs(5);
    c
}

fn bind(creds: &Credentials) -> Endpoint {
    Endpoint::bind(config(), creds).unwrap().0
}

/// The next handshake `server` refuses (an event: the server's verdict may land just after
/// the client's error).
async fn server_refusal(
    refusals: &mut tokio::sync::broadcast::Receiver<(SocketAddr, Refusal)>,
) -> Refusal {
    tokio::time::timeout(Duration::from_secs(10), refusals.recv())
        .await
        .expect("the server refused nothing within 10 s")
        .expect("refusal channel open")
        .1
}

/// Dials with a plain quinn client presenting `creds`; returns how the connection ended
/// (TLS 1.3: the client may finish its side before the server's verdict arrives).
async fn raw_dial(
    pki: &TestPki,
    creds: Option<&Credentials>,
    server: SocketAddr,
) -> quinn::ConnectionError {
    match pki.raw_connect(creds, server).await {
        Err(e) => e,
        Ok(c) => c.closed().await,
    }
}

async fn dial_refused(client: &Endpoint, addr: SocketAddr) -> (RefusedBy, Refusal) {
    match client.link(addr).await {
        Err(TransportError::HandshakeRefused { by, refusal, .. }) => (by, refusal),
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

#[tokio::test]
async fn mutual_tls_between_nodes_of_one_ca_works_and_exposes_identity() {
    let pki = TestPki::new("mtls.test");
    let (_, a) = pki.node("a");
    let (_, b) = pki.node("b");
    let (ea, eb) = (bind(&a), bind(&b));
    let link = ea.link(eb.local_addr()).await.unwrap();
    assert_eq!(link.peer(), &pki.id("b"));
    assert_eq!(link.peer().trust_domain(), "mtls.test");
}

#[tokio::test]
async fn cert_from_another_ca_is_refused_as_unknown_ca() {
    let pki = TestPki::new("mtls.test");
    let (_, server_creds) = pki.node("server");
    let server = bind(&server_creds);
    // Same trust domain, other CA; the client trusts the real CA, so only the server refuses.
    let rogue = CertificateAuthority::generate("mtls.test", Duration::from_secs(3600)).unwrap();
    let mut creds = rogue
        .issue(&pki.id("intruder"), Duration::from_secs(600))
        .unwrap()
        .credentials()
        .unwrap();
    creds.trust = vec![pki.ca.cert_der().clone()];
    let client = bind(&creds);
    let mut refusals = server.subscribe_refusals();
    let (by, refusal) = dial_refused(&client, server.local_addr()).await;
    assert_eq!((by, refusal), (RefusedBy::Peer, Refusal::UnknownCa));
    assert_eq!(server_refusal(&mut refusals).await, Refusal::UnknownCa);
}

#[tokio::test]
async fn client_refuses_a_server_from_another_ca() {
    let pki = TestPki::new("mtls.test");
    let other = TestPki::new("mtls.test");
    let (_, server_creds) = other.node("server");
    let (_, client_creds) = pki.node("client");
    let server = bind(&server_creds);
    let client = bind(&client_creds);
    let (by, refusal) = dial_refused(&client, server.local_addr()).await;
    assert_eq!((by, refusal), (RefusedBy::Us, Refusal::UnknownCa));
}

#[tokio::test]
async fn expired_cert_is_refused_as_expired() {
    let pki = TestPki::new("mtls.test");
    let (_, server_creds) = pki.node("server");
    let server = bind(&server_creds);
    let now = SystemTime::now();
    let expired = pki.node_between(
        "old",
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    );
    let client = bind(&expired);
    let mut refusals = server.subscribe_refusals();
    let (by, refusal) = dial_refused(&client, server.local_addr()).await;
    assert_eq!((by, refusal), (RefusedBy::Peer, Refusal::Expired));
    assert_eq!(server_refusal(&mut refusals).await, Refusal::Expired);
}

#[tokio::test]
async fn identity_outside_the_trust_domain_is_refused() {
    let pki = TestPki::new("mtls.test");
    let (_, server_creds) = pki.node("server");
    let server = bind(&server_creds);
    let foreign = SpiffeId::node("elsewhere.test", "x").unwrap();
    let now = SystemTime::now();
    let creds = pki
        .ca
        .issue_unchecked(
            &foreign,
            now - Duration::from_secs(60),
            now + Duration::from_secs(600),
        )
        .unwrap()
        .credentials()
        .unwrap();
    let mut refusals = server.subscribe_refusals();
    let err = raw_dial(&pki, Some(&creds), server.local_addr()).await;
    let mapped = actormesh::transport::endpoint::map_connection_error(server.local_addr(), &err);
    assert!(
        matches!(
            mapped,
            TransportError::HandshakeRefused {
                by: RefusedBy::Peer,
                refusal: Refusal::WrongTrustDomain { .. },
                ..
            }
        ),
        "{mapped}"
    );
    match server_refusal(&mut refusals).await {
        Refusal::WrongTrustDomain { detail: Some(d) } => {
            assert!(d.contains("spiffe://elsewhere.test/node/x"), "{d}");
            assert!(d.contains("mtls.test"), "{d}");
        }
        other => panic!("expected WrongTrustDomain with detail, got {other}"),
    }
    // And an endpoint whose own identity is foreign refuses the server's trust domain.
    let client = bind(&creds);
    let (by, refusal) = dial_refused(&client, server.local_addr()).await;
    assert_eq!(by, RefusedBy::Us);
    assert!(
        matches!(refusal, Refusal::WrongTrustDomain { .. }),
        "{refusal}"
    );
}

#[tokio::test]
async fn missing_client_cert_is_refused() {
    let pki = TestPki::new("mtls.test");
    let (_, server_creds) = pki.node("server");
    let server = bind(&server_creds);
    let mut refusals = server.subscribe_refusals();
    let err = raw_dial(&pki, None, server.local_addr()).await;
    let mapped = actormesh::transport::endpoint::map_connection_error(server.local_addr(), &err);
    assert!(
        matches!(
            mapped,
            TransportError::HandshakeRefused {
                by: RefusedBy::Peer,
                refusal: Refusal::NoClientCertificate,
                ..
            }
        ),
        "{mapped}"
    );
    assert_eq!(
        server_refusal(&mut refusals).await,
        Refusal::NoClientCertificate
    );
}

#[tokio::test]
async fn protocol_version_mismatch_names_both_versions() {
    let pki = TestPki::new("mtls.test");
    let (_, a) = pki.node("a");
    let (_, b) = pki.node("b");
    let server = bind(&b);
    let mut c = config();
    c.protocol_version = 99;
    let client = Endpoint::bind(c, &a).unwrap().0;
    match client.link(server.local_addr()).await {
        Err(
            e @ TransportError::ProtocolVersion {
                ours: 99,
                theirs: 2,
                ..
            },
        ) => {
            assert!(
                e.to_string()
                    .contains("we speak version 99, the peer speaks version 2"),
                "{e}"
            );
        }
        other => panic!("expected ProtocolVersion, got {other:?}"),
    }
}

#[tokio::test]
async fn simultaneous_dials_end_with_one_link() {
    let pki = TestPki::new("mtls.test");
    let (_, a) = pki.node("a");
    let (_, b) = pki.node("b");
    let (ea, eb) = (bind(&a), bind(&b));
    for _ in 0..20 {
        let (la, lb) = tokio::join!(ea.link(eb.local_addr()), eb.link(ea.local_addr()));
        let (la, lb) = (la.unwrap(), lb.unwrap());
        // Both sides hold the same connection: the one dialed by the lower identity ("a").
        assert_eq!(la.info().dialed_by_us, !lb.info().dialed_by_us);
        assert!(la.info().dialed_by_us, "a's dial should win");
        la.close(0, "next round");
        la.connection().closed().await;
        lb.connection().closed().await;
    }
}

#[tokio::test]
async fn replaced_certificate_is_used_for_new_links() {
    let pki = TestPki::new("mtls.test");
    let (_, a) = pki.node("a");
    let (_, b) = pki.node("b");
    let (ea, eb) = (bind(&a), bind(&b));
    let first = ea.link(eb.local_addr()).await.unwrap();
    let renewed = pki
        .ca
        .issue(&pki.id("b"), Duration::from_secs(7200))
        .unwrap()
        .credentials()
        .unwrap();
    eb.replace_credentials(&renewed).unwrap();
    first.close(0, "reconnect");
    first.connection().closed().await;
    let second = ea.link(eb.local_addr()).await.unwrap();
    assert_ne!(first.info().id, second.info().id);
    assert!(second.info().peer_cert_expiry > first.info().peer_cert_expiry);
    // A replacement must keep the identity.
    let (_, other) = pki.node("c");
    assert!(eb.replace_credentials(&other).is_err());
}

#[tokio::test]
async fn links_are_cycled_before_the_certificate_expires() {
    let pki = TestPki::new("mtls.test");
    let (_, a) = pki.node("a");
    let now = SystemTime::now();
    // b's certificate lives 3 s; a cycles the link at 80% of that.
    let short = pki.node_between(
        "b",
        now - Duration::from_secs(1),
        now + Duration::from_secs(3),
    );
    // Without a layer above to drain it, the replaced link is closed by the fallback.
    let mut c = config();
    c.retire_after = Duration::from_millis(500);
    let (ea, eb) = (Endpoint::bind(c, &a).unwrap().0, bind(&short));
    let first = ea.link(eb.local_addr()).await.unwrap();
    let renewed = pki
        .ca
        .issue(&pki.id("b"), Duration::from_secs(3600))
        .unwrap()
        .credentials()
        .unwrap();
    eb.replace_credentials(&renewed).unwrap();
    // The old link is retired (closed) once the new one is in place.
    first.connection().closed().await;
    let second = ea
        .existing_link(eb.local_addr())
        .expect("a new link replaced the old one");
    assert_ne!(second.info().id, first.info().id);
    assert!(second.info().peer_cert_expiry > now + Duration::from_secs(600));
    assert!(SystemTime::now() < now + Duration::from_secs(3) + Duration::from_secs(3));
}

#[tokio::test]
async fn a_peer_cannot_claim_another_nodes_address() {
    use actormesh::transport::{codec, frame};
    let pki = TestPki::new("mtls.test");
    let (_, a) = pki.node("a");
    let (_, b) = pki.node("b");
    let (_, mallory) = pki.node("mallory");
    let (ea, eb) = (bind(&a), bind(&b));
    let honest = eb.link(ea.local_addr()).await.unwrap();
    // Mallory, with a valid certificate of the same trust domain, says hello as if she
    // listened on b's address and asks to replace b's link.
    let conn = pki
        .raw_connect(Some(&mallory), ea.local_addr())
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let mut hello = actormesh::transport::PROTOCOL_VERSION
        .to_le_bytes()
        .to_vec();
    // Hello { listen, incarnation, replaces } as the codec lays it out.
    codec::encode_into(&(eb.local_addr(), 99u64, true), &mut hello).unwrap();
    let mut out = Vec::new();
    frame::push_frame(&mut out, &hello, 1 << 20).unwrap();
    send.write_all(&out).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap()
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(4))
        }
        other => panic!("expected the impostor's link to be closed, got {other}"),
    }
    // b's real link is untouched.
    assert!(honest.is_alive());
    let again = ea
        .existing_link(eb.local_addr())
        .expect("a still has b's link");
    assert_eq!(again.peer(), &pki.id("b"));
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused_at_start() {
    let pki = TestPki::new("mtls.test");
    let (_, a) = pki.node("a");
    let (_, b) = pki.node("b");
    let mixed = actormesh::transport::pki::Credentials {
        chain: a.chain.clone(),
        key: b.key.clone_key(),
        trust: a.trust.clone(),
    };
    let err = actormesh::transport::tls::CertStore::new(&mixed).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}
