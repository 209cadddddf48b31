//! The metrics-on measurement's tracing: 1 % of the roots traced, spans exported over
//! OTLP/HTTP to a receiver on a thread of its own.

use std::time::Duration;

use anyhow::anyhow;

/// Tracing at [`TRACE_SAMPLE`] of the roots, exported to `url` as `name`.
pub(crate) fn tracing_to(url: &str, name: &str) -> anyhow::Result<actormesh::trace::Tracing> {
    let exporter = actormesh::otlp::OtlpExporter::start(url, name).map_err(|e| anyhow!(e))?;
    actormesh::trace::Tracing::new(exporter, TRACE_SAMPLE).map_err(|e| anyhow!(e))
}

/// The share of root calls traced in the metrics-on measurement.
const TRACE_SAMPLE: f64 = 0.01;

/// An OTLP/HTTP receiver on a thread of its own (its own runtime), so that decoding
/// spans does not share the measured caller's thread.
pub(crate) fn receiver_thread() -> anyhow::Result<actormesh_integration::otlp_receiver::Receiver> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("otlp-receiver".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let _ =
                    tx.send(actormesh_integration::otlp_receiver::Receiver::start_counting().await);
                std::future::pending::<()>().await;
            });
        })?;
    Ok(rx.recv_timeout(Duration::from_secs(10))??)
}
