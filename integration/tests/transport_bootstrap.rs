//! The bootstrap port: a node without a certificate reaches the master only if the
//! master's CA has the fingerprint the node pinned.

use std::time::Duration;

use actormesh::transport::bootstrap::{request, BootstrapServer};
use actormesh::transport::pki::fingerprint;
use actormesh::transport::{Refusal, RefusedBy, TransportError};
use actormesh_integration::pki::TestPki;

#[tokio::test]
async fn a_pinned_ca_gets_a_reply_and_another_is_refused() {
    let pki = TestPki::new("boot.test");
    let (_, master) = pki.node("master");
    let server = BootstrapServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &master,
        |req, _from| async move {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&req);
            reply
        },
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let pin = fingerprint(pki.ca.cert_der());
    let (reply, ca) = request(addr, &pin, b"hello", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(reply, b"echo:hello");
    assert_eq!(&ca, pki.ca.cert_der());

    let other = TestPki::new("boot.test");
    let wrong = fingerprint(other.ca.cert_der());
    match request(addr, &wrong, b"hello", Duration::from_secs(10)).await {
        Err(TransportError::HandshakeRefused {
            by: RefusedBy::Us,
            refusal: Refusal::UnknownCa,
            ..
        }) => {}
        other => panic!("expected the master to be refused as an unknown CA, got {other:?}"),
    }
}
