//! A framed, batching writer for one QUIC send stream.
//!
//! Callers append whole frames to a shared buffer under a short lock; one writer task hands
//! the accumulated bytes to quinn in a single chunk. Many small messages thus cost one
//! stream write, and a sender that outpaces the peer sees the buffer pass its high-water
//! mark: `try_push` then returns [`PushError::Full`] and `push` waits for room.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quinn::SendStream;
use tokio::sync::Notify;

use crate::frame::{begin_frame, finish_frame, FrameError};

/// The reason a sink closed because it had nothing to send for its idle period. A sender
/// that sees `PushError::Closed(IDLE_CLOSED)` may open a new stream and send again.
pub const IDLE_CLOSED: &str = "closed after being idle";

/// The reason a sink closed after [`FrameSink::finish`]: it sent what it had and ended
/// its stream on purpose (for example because its link was replaced).
pub const FINISHED: &str = "finished";

/// Why a frame was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PushError<E> {
    /// The buffer is above its high-water mark; retry later or wait with `push`.
    #[error("send buffer full")]
    Full,
    /// The stream is closed; the reason says why.
    #[error("stream closed: {0}")]
    Closed(String),
    /// The frame was larger than the maximum frame size.
    #[error(transparent)]
    Frame(FrameError),
    /// The caller's encoder failed.
    #[error("encoding failed: {0}")]
    Encode(E),
}

/// Why a [`SinkDriver`] stopped writing before the sink was closed or finished.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// quinn refused a write: the peer stopped the stream or the connection was lost.
    #[error("{0}")]
    Write(#[from] quinn::WriteError),
}

#[derive(Debug, Default)]
struct State {
    buf: Vec<u8>,
    closed: Option<String>,
    finish: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake_writer: Notify,
    space: Notify,
    high_water: usize,
    max_frame: usize,
}

/// The sending side of a framed stream; cheap to clone.
#[derive(Debug, Clone)]
pub struct FrameSink {
    shared: Arc<Shared>,
}

/// Drives a [`FrameSink`]: run it (spawned) with the stream to write to.
#[derive(Debug)]
pub struct SinkDriver {
    shared: Arc<Shared>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FrameSink {
    /// A sink that holds at most about `high_water` unsent bytes.
    pub fn new(high_water: usize, max_frame: usize) -> (FrameSink, SinkDriver) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake_writer: Notify::new(),
            space: Notify::new(),
            high_water,
            max_frame,
        });
        (
            FrameSink {
                shared: shared.clone(),
            },
            SinkDriver { shared },
        )
    }

    /// Appends one frame whose body `write` produces, unless the buffer is full or closed.
    #[inline]
    pub fn try_push<E>(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        let mut st = lock(&self.shared.state);
        if let Some(reason) = &st.closed {
            return Err(PushError::Closed(reason.clone()));
        }
        if st.buf.len() >= self.shared.high_water {
            return Err(PushError::Full);
        }
        let was_empty = st.buf.is_empty();
        let start = begin_frame(&mut st.buf);
        if let Err(e) = write(&mut st.buf) {
            st.buf.truncate(start);
            return Err(PushError::Encode(e));
        }
        finish_frame(&mut st.buf, start, self.shared.max_frame).map_err(PushError::Frame)?;
        drop(st);
        if was_empty {
            self.shared.wake_writer.notify_one();
        }
        Ok(())
    }

    /// Appends one frame produced by `write`, waiting while the buffer is above its
    /// high-water mark. `write` is called once, when there is room.
    pub async fn push<E>(
        &self,
        mut write: impl FnMut(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        loop {
            let space = self.shared.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.try_push(&mut write) {
                Err(PushError::Full) => space.await,
                other => return other,
            }
        }
    }

    /// Whether the buffer is above its high-water mark.
    pub fn is_full(&self) -> bool {
        lock(&self.shared.state).buf.len() >= self.shared.high_water
    }

    /// Whether the stream is closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed.is_some()
    }

    /// Refuses further frames and discards unsent ones.
    pub fn close(&self, reason: &str) {
        let mut st = lock(&self.shared.state);
        st.closed.get_or_insert_with(|| reason.to_string());
        st.buf = Vec::new();
        drop(st);
        self.shared.wake_writer.notify_one();
        self.shared.space.notify_waiters();
    }

    /// Refuses further frames, sends what is buffered, then finishes the stream.
    pub fn finish(&self) {
        let mut st = lock(&self.shared.state);
        st.finish = true;
        st.closed.get_or_insert_with(|| FINISHED.to_string());
        drop(st);
        self.shared.wake_writer.notify_one();
        // Senders waiting for room must learn that none will come.
        self.shared.space.notify_waiters();
    }
}

impl SinkDriver {
    /// Writes `header` and then every batch of frames to `stream` until the sink is
    /// closed or the stream fails. Returns the error that ended it, if any. With
    /// `idle_close`, a sink that had nothing to send for that long finishes its stream and
    /// closes with [`IDLE_CLOSED`], so unused streams do not pile up.
    pub async fn run(
        self,
        mut stream: SendStream,
        header: Vec<u8>,
        idle_close: Option<std::time::Duration>,
    ) -> Result<(), SinkError> {
        if !header.is_empty() {
            if let Err(e) = stream.write_chunk(Bytes::from(header)).await {
                self.fail(e.to_string());
                return Err(e.into());
            }
        }
        loop {
            let wake = self.shared.wake_writer.notified();
            let (batch, finish) = {
                let mut st = lock(&self.shared.state);
                let batch = std::mem::take(&mut st.buf);
                let finish = st.finish || (st.closed.is_some() && batch.is_empty());
                (batch, finish)
            };
            if !batch.is_empty() {
                self.shared.space.notify_waiters();
                if let Err(e) = stream.write_chunk(Bytes::from(batch)).await {
                    self.fail(e.to_string());
                    return Err(e.into());
                }
                continue;
            }
            if finish {
                let _ = stream.finish();
                return Ok(());
            }
            match idle_close {
                None => wake.await,
                Some(idle) => {
                    tokio::select! {
                        _ = wake => {}
                        _ = tokio::time::sleep(idle) => {
                            let mut st = lock(&self.shared.state);
                            if st.buf.is_empty() && st.closed.is_none() {
                                st.closed = Some(IDLE_CLOSED.to_string());
                                drop(st);
                                self.shared.space.notify_waiters();
                                let _ = stream.finish();
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Ends the sink without a stream (the stream could not be opened): pushes fail with
    /// `reason` from now on and buffered frames are dropped.
    pub fn abort(self, reason: &str) {
        self.fail(reason.to_string());
    }

    fn fail(&self, reason: String) {
        let mut st = lock(&self.shared.state);
        st.closed.get_or_insert(reason);
        st.buf = Vec::new();
        drop(st);
        self.shared.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_closed_are_reported_without_losing_earlier_frames() {
        let (sink, driver) = FrameSink::new(16, 1024);
        sink.try_push(|b| {
            b.extend_from_slice(&[1; 20]);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert!(matches!(
            sink.try_push(|_| Ok::<_, ()>(())),
            Err(PushError::Full)
        ));
        assert_eq!(lock(&driver.shared.state).buf.len(), 24);
        sink.close("gone");
        assert!(
            matches!(sink.try_push(|_| Ok::<_, ()>(())), Err(PushError::Closed(r)) if r == "gone")
        );
    }

    #[test]
    fn encoder_failure_leaves_no_partial_frame() {
        let (sink, driver) = FrameSink::new(1024, 1024);
        let r = sink.try_push(|b| {
            b.push(9);
            Err::<(), _>("nope")
        });
        assert!(matches!(r, Err(PushError::Encode("nope"))));
        assert!(lock(&driver.shared.state).buf.is_empty());
    }
}
