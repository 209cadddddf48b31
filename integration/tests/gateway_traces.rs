//! Traces start at the ingress gateway: a request with a W3C `traceparent` continues the
//! client's trace (the gateway's span is a child of the client's), and one without starts
//! a trace there. A master, an agent serving the demo echo and a gateway node run in this
//! process; the gateway's node exports its spans over OTLP/HTTP to a real receiver.

use std::time::{Duration, Instant};

use actormesh::agent::{self, AgentConfig};
use actormesh::mesh::ServiceName;
use actormesh::otlp::OtlpExporter;
use actormesh::resources::Resources;
use actormesh::trace::Tracing;
use actormesh_integration::otlp_receiver::Receiver;
use actormesh_master::{
    self as master, ApplyDeployment, ApplyTraffic, MasterConfig, ServiceEndpoints,
};

const GATEWAY: &str = r#"{"kind":"Gateway","name":"public","spec":{}}"#;
const ROUTE: &str = r#"{"kind":"HttpRoute","name":"hello","spec":{"gateway":"public","rules":[{"match":{"path":"/hello/{name}"},"service":"echo","message":"demo.Greet/v1"}]}}"#;

/// GET `url` with `headers`, off this thread (the gateway answers on it): the status.
async fn get(url: String, headers: Vec<(&'static str, String)>) -> u16 {
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::get(&url);
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        match req.call() {
            Ok(r) => r.status().as_u16(),
            Err(ureq::Error::StatusCode(s)) => s,
            Err(e) => panic!("GET {url}: {e}"),
        }
    })
    .await
    .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[actix::test]
async fn the_gateway_continues_a_clients_trace_and_starts_one_without() {
    let dir = std::env::temp_dir().join(format!("am-gw-traces-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = MasterConfig::new(dir.join("master"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.bootstrap = "127.0.0.1:0".parse().unwrap();
    config.api = "127.0.0.1:0".parse().unwrap();
    let m = master::start(config).await.unwrap();
    let token = || async { m.agent_token(Duration::from_secs(60)).await.unwrap() };
    let _a1 = agent::start(
        AgentConfig::new(m.bootstrap, dir.join("a1"))
            .token(token().await)
            .name("a1")
            .host(actormesh_cli::demo::host()),
    )
    .await
    .unwrap();
    m.master
        .send(ApplyDeployment(actormesh_cli::demo::ECHO_DEPLOYMENT.into()))
        .await
        .unwrap()
        .unwrap();
    for object in [GATEWAY, ROUTE] {
        m.master
            .send(ApplyTraffic(object.into()))
            .await
            .unwrap()
            .unwrap();
    }
    let echo = ServiceName::parse("echo", "default").unwrap();
    let started = Instant::now();
    while m
        .master
        .send(ServiceEndpoints(echo.clone()))
        .await
        .unwrap()
        .map(|s| s.endpoints.is_empty())
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no echo endpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let receiver = Receiver::start().await.unwrap();
    let exporter = OtlpExporter::start(&receiver.endpoint(), "gateway").unwrap();
    let mut gw_config = AgentConfig::new(m.bootstrap, dir.join("gw"))
        .token(token().await)
        .name("gw")
        .resources(Resources::default());
    gw_config.tracing = Some(Tracing::new(exporter.clone(), 1.0).unwrap());
    let gw = agent::start(gw_config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served =
        actormesh_cli::gateway::serve(&gw, "default".into(), "public".into(), listener, None)
            .unwrap();
    assert!(served.configured(Duration::from_secs(10)).await);
    let url = format!("http://{}/hello/you", served.addr);
    // Until the gateway's proxy has the echo's endpoint.
    let started = Instant::now();
    while get(url.clone(), Vec::new()).await != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traced = vec![("traceparent", format!("00-{trace}-{parent}-01"))];
    assert_eq!(get(url.clone(), traced).await, 200);
    let began = Instant::now();
    while exporter.pending() > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "spans not exported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|r| r.service == "gateway")
        .collect();
    assert!(
        spans
            .iter()
            .any(|r| hex(&r.span.trace_id) == trace && hex(&r.span.parent_span_id) == parent),
        "a span of the gateway continues the client's trace, a child of its span: {spans:#?}"
    );
    assert!(
        spans
            .iter()
            .any(|r| hex(&r.span.trace_id) != trace && r.span.parent_span_id.is_empty()),
        "a request without a traceparent starts a trace at the gateway: {spans:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
