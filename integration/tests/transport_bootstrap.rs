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
    assert_eq!(ca, vec![pki.ca.cert_der().clone()]);

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

/// Joining the wrong port fails at once and says what answers there: a mesh port, the
/// operator API (HTTP on TCP, nothing on UDP), or nothing at all.
#[tokio::test]
async fn a_join_through_the_wrong_port_says_what_answers_there() {
    use actormesh::transport::{Endpoint, EndpointConfig};
    use std::io::{Read, Write};
    let pki = TestPki::new("boot.test");
    let (_, master) = pki.node("master");
    let pin = fingerprint(pki.ca.cert_der());
    // Waiting it out would answer "no bootstrap reply": each answer below comes from an
    // event (a TLS alert, an ICMP port unreachable) instead.
    let limit = Duration::from_secs(60);

    let (mesh, _) =
        Endpoint::bind(EndpointConfig::new("127.0.0.1:0".parse().unwrap()), &master).unwrap();
    match request(mesh.local_addr(), &pin, b"join", limit).await {
        Err(e @ TransportError::NotABootstrapPort { .. }) => {
            let said = e.to_string();
            assert!(
                said.contains("is not a bootstrap port") && said.contains("mesh port"),
                "{said}"
            );
        }
        other => panic!("expected a mesh port to be named, got {other:?}"),
    }

    // An HTTP server on TCP, with nothing on the same UDP port.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in http.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        }
    });
    match request(http_addr, &pin, b"join", limit).await {
        Err(e @ TransportError::NotABootstrapPort { .. }) => {
            let said = e.to_string();
            assert!(
                said.contains("answers HTTP") && said.contains("operator API (--api)"),
                "{said}"
            );
        }
        other => panic!("expected the HTTP API to be named, got {other:?}"),
    }

    // Nothing on the port: a UDP port just freed.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    match request(dead, &pin, b"join", limit).await {
        Err(TransportError::Unreachable { reason, .. }) => {
            assert!(
                reason.contains("nothing listens on this UDP port"),
                "{reason}"
            )
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

/// A closed bootstrap port frees its address even while a request is under way there (a
/// standby's forwarded join waiting on a dead leader), so a new leader can bind it.
#[tokio::test]
async fn a_closed_bootstrap_port_frees_its_address_with_a_request_under_way() {
    let pki = TestPki::new("boot.test");
    let (_, master) = pki.node("master");
    let (asked, mut under_way) = tokio::sync::mpsc::unbounded_channel::<()>();
    let server = BootstrapServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &master,
        move |_req, _from| {
            let asked = asked.clone();
            async move {
                let _ = asked.send(());
                std::future::pending::<Vec<u8>>().await
            }
        },
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let pin = fingerprint(pki.ca.cert_der());
    let stuck =
        tokio::spawn(async move { request(addr, &pin, b"hello", Duration::from_secs(30)).await });
    under_way
        .recv()
        .await
        .expect("the request reached the handler");
    server.close().await;
    // The socket goes with the last handle of the endpoint, a moment after the close.
    let started = std::time::Instant::now();
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(_) => break,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(2),
                "the port stays taken after the close: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stuck.abort();
}
