//! A client's call load on a service by name, from its own node and Proxy: two loops of
//! calls until stopped, counting the answers and keeping the first errors.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client calling `service` (the demo echo) in two loops until stopped (at most 5 minutes or
/// 500,000 calls): the counts and the first errors.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(identity: &Path, service: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, o, e) = (stop.clone(), ok.clone(), errors.clone());
        let client = actormesh::client::load(identity).expect("client identity");
        let service = service.to_string();
        let thread = std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let mesh = client
                    .connect(
                        actormesh::mesh::MeshOptions::default(),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("client mesh");
                let started = Instant::now();
                let one_loop = |n: u32| {
                    let (mesh, s, o, e) = (mesh.clone(), s.clone(), o.clone(), e.clone());
                    let service = service.clone();
                    async move {
                        let options = actormesh::mesh::CallOptions {
                            timeout: Some(Duration::from_secs(5)),
                            ..Default::default()
                        };
                        let echo = mesh.service_named(
                            actormesh::mesh::ServiceName::parse(&service, "default").unwrap(),
                        );
                        let payload = serde_json::json!({ "name": format!("loop{n}") });
                        for _ in 0..250_000u32 {
                            if s.load(Ordering::Relaxed)
                                || started.elapsed() > Duration::from_secs(300)
                            {
                                break;
                            }
                            match echo.ask_json("demo.Greet/v1", &payload, &options).await {
                                Ok(_) => {
                                    o.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(err) => {
                                    let mut e = e.lock().unwrap();
                                    if e.len() < 20 {
                                        e.push(err.to_string());
                                    }
                                }
                            }
                        }
                    }
                };
                futures::future::join(one_loop(1), one_loop(2)).await;
                mesh.node().shutdown();
            })
        });
        Self {
            stop,
            ok,
            errors,
            thread: Some(thread),
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further calls succeeded (at most 30 s).
    pub async fn more(&self, more: u64, during: &str) {
        let target = self.ok() + more;
        let start = Instant::now();
        while self.ok() < target {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "load stalled {during}: {} ok, errors {:?}",
                self.ok(),
                self.errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load; returns (calls that succeeded, errors).
    pub fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            tokio::task::block_in_place(|| t.join().unwrap());
        }
        (self.ok(), self.errors.lock().unwrap().clone())
    }
}
