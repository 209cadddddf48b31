//! The bound on an actor's mailbox: a counter of messages queued but not yet handled.
//!
//! A permit is taken before a message is queued and given back when its handler has run.
//! Unlike tokio's semaphore, giving a permit back takes no lock when nobody waits, which
//! matters on the local ask path (one permit per message).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct MailboxGate {
    used: AtomicUsize,
    capacity: usize,
    waiters: AtomicUsize,
    room: Notify,
}

/// One queued message's place in the mailbox; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Permit(Arc<MailboxGate>);

impl MailboxGate {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            capacity: capacity.max(1),
            waiters: AtomicUsize::new(0),
            room: Notify::new(),
        })
    }

    /// A place, if there is one now.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut cur = self.used.load(SeqCst);
        loop {
            if cur >= self.capacity {
                return None;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst)
            {
                Ok(_) => return Some(Permit(self.clone())),
                Err(actual) => cur = actual,
            }
        }
    }

    /// A place, waiting until there is one.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            if let Some(p) = self.try_acquire() {
                return p;
            }
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            // Registered before the second try: a place freed in between is not missed
            // (the releaser sees the waiter and notifies, storing a permit if need be).
            self.waiters.fetch_add(1, SeqCst);
            let got = self.try_acquire();
            if got.is_none() {
                room.await;
            }
            self.waiters.fetch_sub(1, SeqCst);
            if let Some(p) = got {
                return p;
            }
        }
    }

    /// Places in all.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Messages queued and not yet handled.
    pub(crate) fn depth(&self) -> usize {
        self.used.load(SeqCst)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, SeqCst);
        if self.0.waiters.load(SeqCst) > 0 {
            self.0.room.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_released_on_drop() {
        let g = MailboxGate::new(2);
        let a = g.try_acquire().unwrap();
        let _b = g.try_acquire().unwrap();
        assert!(g.try_acquire().is_none());
        assert_eq!(g.depth(), 2);
        drop(a);
        assert!(g.try_acquire().is_some());
    }

    #[tokio::test]
    async fn waiters_wake_when_room_frees() {
        let g = MailboxGate::new(1);
        let held = g.try_acquire().unwrap();
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.acquire().await });
        tokio::task::yield_now().await;
        drop(held);
        let p = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was woken")
            .unwrap();
        assert_eq!(g.depth(), 1);
        drop(p);
        assert_eq!(g.depth(), 0);
    }
}
