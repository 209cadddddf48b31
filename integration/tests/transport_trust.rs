//! Trust bundles on running endpoints: a second CA trusted beside the first, a leaf of the
//! new CA with the bridge accepted by a peer that trusts only the old one, and a dropped CA
//! refused on new links and on open ones.

use std::time::Duration;

use actormesh::transport::pki::{CertificateAuthority, Credentials};
use actormesh::transport::quinn::rustls::pki_types::pem::PemObject;
use actormesh::transport::quinn::rustls::pki_types::CertificateDer;
use actormesh::transport::{Endpoint, EndpointConfig, Refusal, TransportError};
use actormesh_integration::pki::TestPki;

fn bind(creds: &Credentials) -> Endpoint {
    let mut c = EndpointConfig::new("127.0.0.1:0".parse().unwrap());
    c.handshake_timeout = Duration::from_secs(5);
    Endpoint::bind(c, creds).unwrap().0
}

#[tokio::test]
async fn a_bundle_change_takes_effect_on_new_links_and_a_dropped_ca_closes_open_ones() {
    let pki = TestPki::new("trust.test");
    let next = CertificateAuthority::generate("trust.test", Duration::from_secs(3600)).unwrap();
    let bridge = pki.ca.cross_sign(&next).unwrap();
    let (_, old_a) = pki.node("a");
    let old_only = bind(&old_a);

    // b holds a certificate from the new CA, presented with the bridge.
    let mut b = next
        .issue(&pki.id("b"), Duration::from_secs(600))
        .unwrap()
        .credentials()
        .unwrap();
    b.trust = vec![pki.ca.cert_der().clone(), next.cert_der().clone()];
    let bridged = bind(&Credentials {
        chain: {
            let mut c = b.chain.clone();
            c.push(CertificateDer::from_pem_slice(bridge.as_bytes()).unwrap());
            c
        },
        ..b.clone()
    });
    // Without the bridge, a peer that trusts only the old CA refuses the new one's leaf.
    let unbridged = bind(&b);
    match old_only.link(unbridged.local_addr()).await {
        Err(TransportError::HandshakeRefused {
            refusal: Refusal::UnknownCa,
            ..
        }) => {}
        other => panic!("expected unknown CA, got {other:?}"),
    }
    // With it, the link is made both ways.
    let link = old_only.link(bridged.local_addr()).await.unwrap();
    assert_eq!(link.peer(), &pki.id("b"));

    // The old CA is dropped on a: the open link to b stays (b's leaf is from the new CA);
    // a link to a peer of the old CA closes, and new ones are refused.
    let (_, c) = pki.node("c");
    let old_peer = bind(&c);
    let to_old = old_only.link(old_peer.local_addr()).await.unwrap();
    let closed = old_only.replace_trust(&[next.cert_der().clone()]).unwrap();
    assert_eq!(closed, 1, "only the link to the old CA's peer closes");
    tokio::time::timeout(Duration::from_secs(5), to_old.connection().closed())
        .await
        .expect("the link to a peer of the dropped CA closed");
    assert!(
        link.connection().close_reason().is_none(),
        "the bridged link stays"
    );
    assert_eq!(old_only.trust(), vec![next.cert_der().clone()]);
    let fresh = bind(&c);
    assert!(matches!(
        old_only.link(fresh.local_addr()).await,
        Err(TransportError::HandshakeRefused {
            refusal: Refusal::UnknownCa,
            ..
        })
    ));
    // An empty bundle is refused and changes nothing.
    assert!(old_only.replace_trust(&[]).is_err());
    assert_eq!(old_only.trust().len(), 1);
}
