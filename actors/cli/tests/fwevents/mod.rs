//! A framework's events as a test sees them: an actor that forwards each
//! `FrameworkEvent` to a channel, and a wait for the next event a test cares about.

use std::time::Duration;

use actix::prelude::*;
use actormesh::framework::FrameworkEvent;
use tokio::sync::mpsc;

/// Forwards every event to its channel.
pub struct Events(pub mpsc::UnboundedSender<FrameworkEvent>);

impl Actor for Events {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<FrameworkEvent> for Events {
    type Result = ();
    fn handle(&mut self, e: FrameworkEvent, _: &mut Context<Self>) {
        let _ = self.0.send(e);
    }
}

/// The first event for which `pick` gives something (others are skipped), within 30 s.
pub async fn next<T>(
    rx: &mut mpsc::UnboundedReceiver<FrameworkEvent>,
    what: &str,
    mut pick: impl FnMut(&FrameworkEvent) -> Option<T>,
) -> T {
    let work = async {
        loop {
            let e = rx.recv().await.expect("events channel open");
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .unwrap_or_else(|_| panic!("no {what} within 30 s"))
}
