//! `actormesh gateway`, with real processes: a master, an agent serving the demo echo as
//! `default/echo`, and a gateway node. A Gateway and its HttpRoute, applied with the CLI,
//! turn HTTP requests (HTTP/1.1, and HTTP/2 with curl) into calls by name: path
//! parameters, query and body become the message's JSON, the reply's JSON is the body, the
//! named headers travel on as metadata with the client's trace, and errors and limits
//! have their statuses.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ECHO: &str = "kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:1\" }\n  service: {}\n";

const GATEWAY: &str = "kind: Gateway
name: public
spec:
  forward_headers: [end-user]
  max_body_bytes: 1024
  max_header_bytes: 2048
";

const ROUTES: &str = "kind: HttpRoute
name: demo
spec:
  gateway: public
  rules:
    - match:
        path: /hello/{name}
        method: GET
      service: echo
      message: demo.Greet/v1
    - match:
        path: /greet
        method: POST
      service: echo
      message: demo.Greet/v1
    - match:
        path: /whoami
      service: echo
      message: demo.Whoami/v1
    - match:
        path: /nowhere
      service: nothing
      message: demo.Greet/v1
";

/// An HTTP/1.1 request: the status and the body's JSON.
fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, serde_json::Value) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build(),
    );
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.unwrap_or_default().to_vec()).unwrap();
    let mut resp = tokio::task::block_in_place(|| agent.run(req)).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_become_calls_by_name_and_errors_and_limits_have_their_statuses() {
    let dir = temp_dir("gateway");
    let m = Master::start(&dir.join("master"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let token = m.token(600);
    let _a1 = agent(
        &m,
        &dir.join("a1"),
        "a1",
        Some(&token),
        &["--demo-actors", "--resources", "cpus:2;mem:1GiB"],
    )
    .await;
    let file = dir.join("echo.yaml");
    std::fs::write(&file, ECHO).unwrap();
    let out = m.cli(&["apply", "-f", file.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    let (gw_file, routes_file) = (dir.join("gateway.yaml"), dir.join("routes.yaml"));
    std::fs::write(&gw_file, GATEWAY).unwrap();
    std::fs::write(&routes_file, ROUTES).unwrap();
    for f in [&gw_file, &routes_file] {
        let out = m.cli(&["apply", "-f", f.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }

    let http_addr = free_tcp();
    let (join, at) = (m.bootstrap.to_string(), http_addr.to_string());
    let mut gw = Proc::spawn(&[
        "gateway",
        "--join",
        &join,
        "--token",
        &token,
        "--data-dir",
        dir.join("gw").to_str().unwrap(),
        "--name",
        "gw1",
        "--gateway",
        "default/public",
        "--http",
        &at,
    ]);
    let ready = gw.line("gateway default/public ready").await;
    assert!(ready.contains(&format!("http://{http_addr}")), "{ready}");
    let base = format!("http://{http_addr}");

    // The gateway fetches its routes within a second or so.
    let started = Instant::now();
    let hello = loop {
        let (status, body) = http("GET", &format!("{base}/hello/you"), &[], None);
        if status == 200 {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway never served the route: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        hello, "hello, you",
        "the path parameter is the message's field"
    );
    let (status, body) = http(
        "POST",
        &format!("{base}/greet"),
        &[("content-type", "application/json")],
        Some(br#"{"name":"body"}"#),
    );
    assert_eq!((status, body), (200, serde_json::json!("hello, body")));
    let (status, body) = http("POST", &format!("{base}/greet?name=query"), &[], None);
    assert_eq!((status, body), (200, serde_json::json!("hello, query")));

    // The named header travels on as metadata, and the client's trace is continued.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace}-00f067aa0ba902b7-01");
    let (status, body) = http(
        "GET",
        &format!("{base}/whoami"),
        &[
            ("End-User", "jason"),
            ("traceparent", &parent),
            ("cookie", "no"),
        ],
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["end_user"], "jason", "{body}");
    assert_eq!(body["trace_id"], trace, "{body}");

    // Errors have their statuses, and say what is wrong.
    let (status, body) = http("POST", &format!("{base}/greet"), &[], Some(b"{\"name\":"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not JSON"),
        "{body}"
    );
    let (status, body) = http(
        "POST",
        &format!("{base}/greet"),
        &[],
        Some(br#"{"nam":"x"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("name"),
        "the field: {body}"
    );
    let (status, body) = http(
        "POST",
        &format!("{base}/greet"),
        &[],
        Some(br#"{"name":5}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("name: invalid type"),
        "the field of a wrong type: {body}"
    );
    let (status, body) = http("GET", &format!("{base}/nope"), &[], None);
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no route"),
        "{body}"
    );
    let (status, body) = http("DELETE", &format!("{base}/hello/you"), &[], None);
    assert_eq!(status, 404, "the method is part of the match: {body}");
    let (status, body) = http("GET", &format!("{base}/nowhere"), &[], None);
    assert_eq!(status, 503, "no endpoints: {body}");
    let big = vec![b' '; 2000];
    let (status, body) = http("POST", &format!("{base}/greet"), &[], Some(&big));
    assert_eq!(status, 413, "{body}");
    let long = "x".repeat(3000);
    let (status, body) = http(
        "GET",
        &format!("{base}/hello/you"),
        &[("x-long", &long)],
        None,
    );
    assert_eq!(status, 431, "{body}");

    // HTTP/2, with prior knowledge.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-w",
                " %{http_version}",
                &format!("{base}/hello/h2"),
            ])
            .output()
            .expect("curl (the test command installs it)")
    });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\"hello, h2\" 2",
        "{out:?}"
    );

    // The gateway calls as its workload, which authorization policies name: allowing
    // another workload only, its requests are denied (403); allowing its own, answered.
    let only = |principal: &str| {
        let f = dir.join("only.yaml");
        std::fs::write(
            &f,
            format!("kind: AuthorizationPolicy\nname: only\nspec:\n  service: echo\n  action: ALLOW\n  rules:\n    - from: [ {{ source: {{ principals: [\"{principal}\"] }} }} ]\n"),
        )
        .unwrap();
        let out = m.cli(&["apply", "-f", f.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    };
    let until = |want: u16| {
        let base = base.clone();
        async move {
            let started = Instant::now();
            loop {
                let (status, body) = http("GET", &format!("{base}/hello/you"), &[], None);
                if status == want {
                    return body;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "not {want}: {status} {body}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    only("*/ns/default/sa/other");
    let denied = until(403).await;
    assert!(
        denied["error"].as_str().unwrap().contains("only"),
        "{denied}"
    );
    only("*/ns/default/sa/public");
    assert_eq!(until(200).await, "hello, you");

    // Over TLS: a second gateway node serving the same Gateway with a certificate, HTTP/2
    // and HTTP/1.1 as ALPN chooses. A key that is no key is refused at start, naming it.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.join("gw.crt"), dir.join("gw.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let tls_addr = free_tcp().to_string();
    let gw_tls = |key: &std::path::Path| {
        Proc::spawn(&[
            "gateway",
            "--join",
            &join,
            "--token",
            &token,
            "--data-dir",
            dir.join("gw-tls").to_str().unwrap(),
            "--name",
            "gw2",
            "--gateway",
            "default/public",
            "--http",
            &tls_addr,
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
    };
    let said = gw_tls(&cert_file).exit_stderr().await;
    assert!(said.contains("--tls-key"), "{said}");
    let mut gw2 = gw_tls(&key_file);
    let ready = gw2.line("gateway default/public ready").await;
    assert!(ready.contains(&format!("https://{tls_addr}")), "{ready}");
    let curl_tls = |version: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                version,
                "-w",
                " %{http_version}",
                &format!("https://{tls_addr}/hello/tls"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let started = Instant::now();
    loop {
        let got = tokio::task::block_in_place(|| curl_tls("--http2"));
        if got == "\"hello, tls\" 2" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "over TLS: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        tokio::task::block_in_place(|| curl_tls("--http1.1")),
        "\"hello, tls\" 1.1"
    );
    gw2.kill().await;

    // A route deleted is gone from the gateway within its refresh.
    let out = m.cli(&["delete", "http-route", "demo"]);
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    loop {
        let (status, _) = http("GET", &format!("{base}/hello/you"), &[], None);
        if status == 404 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still served: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
