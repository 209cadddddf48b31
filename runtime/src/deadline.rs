//! The deadline of a local ask, armed lazily.
//!
//! A tokio timer costs about as much as a whole local actix round trip (registering and
//! removing a wheel entry). Most local asks are answered within one scheduling round, so
//! the first time the ask is pending it only yields; the timer is armed if the reply has
//! still not come when the task runs again. The deadline therefore counts from that
//! second poll: later than the call by one scheduling round at most.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// The deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

pub(crate) struct LazyDeadline<F> {
    fut: F,
    timeout: Duration,
    yielded: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<F: Future + Unpin> LazyDeadline<F> {
    pub(crate) fn new(fut: F, timeout: Duration) -> Self {
        Self {
            fut,
            timeout,
            yielded: false,
            sleep: None,
        }
    }
}

impl<F: Future + Unpin> Future for LazyDeadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(v) = Pin::new(&mut this.fut).poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_when_nothing_arrives() {
        let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
        let r = LazyDeadline::new(rx, Duration::from_secs(3)).await;
        assert_eq!(r, Err(Elapsed));
    }

    #[tokio::test]
    async fn passes_the_value_through() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move { tx.send(5).unwrap() });
        assert_eq!(
            LazyDeadline::new(rx, Duration::from_secs(3))
                .await
                .unwrap()
                .unwrap(),
            5
        );
    }
}
