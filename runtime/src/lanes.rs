//! The lane book: which lane carries frames to each remote actor, and the rule that keeps
//! order across lanes. A new lane to an actor opens its stream only after the previous
//! lane to that actor is done (the receiver sent `LaneDone`) or can no longer be (its
//! writer ended with its link); until then its frames wait in its buffer. Plain: no I/O
//! and no clock; the peer's lane writers drive it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actormesh_transport::sink::{FrameSink, SinkDriver};
use tokio::sync::Notify;

/// Set once everything sent on a lane has been read by the receiver (or can no longer
/// be: its link is gone).
#[derive(Debug, Default)]
pub(crate) struct Drained {
    done: AtomicBool,
    notify: Notify,
}

impl Drained {
    fn set(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct Lane {
    id: u64,
    sink: FrameSink,
}

/// A lane just filed; its writer is to be started with `driver`.
#[derive(Debug)]
pub(crate) struct NewLane {
    pub(crate) id: u64,
    pub(crate) sink: FrameSink,
    pub(crate) driver: SinkDriver,
    /// Set when this lane is done.
    pub(crate) drained: Arc<Drained>,
    /// The previous lane to the same actor, not yet done: the stream opens after it.
    pub(crate) after: Option<Arc<Drained>>,
}

/// The lane to use for a frame.
#[derive(Debug)]
pub(crate) enum LaneFor {
    /// The lane in use.
    Open(FrameSink),
    /// A new lane, whose writer the caller starts.
    New(NewLane),
}

/// The lanes from this node to the actors of one peer.
#[derive(Debug, Default)]
pub(crate) struct LaneBook {
    /// The newest lane to each actor.
    lanes: HashMap<Arc<str>, Lane>,
    /// Lanes not done yet, by id: each blocks the next lane to its actor.
    draining: HashMap<u64, Arc<Drained>>,
}

impl LaneBook {
    /// The open lane to `target`, or a new one (id from `next_id`, buffer from `sink`)
    /// that waits for the previous lane to `target` if it is not done.
    #[inline]
    pub(crate) fn lane_for(
        &mut self,
        target: &Arc<str>,
        next_id: impl FnOnce() -> u64,
        sink: impl FnOnce() -> (FrameSink, SinkDriver),
    ) -> LaneFor {
        let after = match self.lanes.get(target) {
            Some(lane) if !lane.sink.is_closed() => return LaneFor::Open(lane.sink.clone()),
            Some(lane) => self.draining.get(&lane.id).cloned(),
            None => None,
        };
        let (sink, driver) = sink();
        let id = next_id();
        let drained = Arc::new(Drained::default());
        self.draining.insert(id, drained.clone());
        self.lanes.insert(
            target.clone(),
            Lane {
                id,
                sink: sink.clone(),
            },
        );
        LaneFor::New(NewLane {
            id,
            sink,
            driver,
            drained,
            after,
        })
    }

    /// The receiver sent `LaneDone { id }`: it read lane `id` to its end.
    pub(crate) fn done(&mut self, id: u64) {
        if let Some(d) = self.draining.remove(&id) {
            d.set();
        }
    }

    /// Lane `id`'s writer ended (done, or its stream or link failed): it holds back no
    /// later lane, and the book forgets it so that it holds only lanes in use.
    pub(crate) fn ended(&mut self, target: &Arc<str>, id: u64) {
        self.done(id);
        if self.lanes.get(target).is_some_and(|l| l.id == id) {
            self.lanes.remove(target);
        }
    }

    /// The link was replaced: every lane finishes its stream; the next frame to each actor
    /// opens a new lane (on the new link) behind it. Returns the lanes to wait for before
    /// the old link is closed.
    pub(crate) fn finish_all(&mut self) -> Vec<Arc<Drained>> {
        self.lanes
            .values()
            .filter_map(|lane| {
                lane.sink.finish();
                self.draining.get(&lane.id).cloned()
            })
            .collect()
    }

    /// The current link closed: its lanes can no longer be read, so none holds back the
    /// next one. (Their writers end with the connection.)
    pub(crate) fn link_lost(&mut self) {
        self.lanes.clear();
    }

    /// Lanes in use (not closed).
    pub(crate) fn open_count(&self) -> usize {
        self.lanes.values().filter(|l| !l.sink.is_closed()).count()
    }

    /// Lanes the book still holds, closed or not.
    #[cfg(test)]
    fn filed(&self) -> usize {
        self.lanes.len() + self.draining.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ids(u64);

    impl Ids {
        fn next(&mut self) -> impl FnOnce() -> u64 + '_ {
            move || {
                self.0 += 1;
                self.0
            }
        }
    }

    fn sink() -> (FrameSink, SinkDriver) {
        FrameSink::new(1024, 1024)
    }

    fn new_lane(book: &mut LaneBook, ids: &mut Ids, target: &Arc<str>) -> NewLane {
        match book.lane_for(target, ids.next(), sink) {
            LaneFor::New(lane) => lane,
            LaneFor::Open(_) => panic!("expected a new lane to {target}"),
        }
    }

    #[test]
    fn frames_share_the_open_lane_to_an_actor() {
        let mut book = LaneBook::default();
        let mut ids = Ids(0);
        let a: Arc<str> = Arc::from("a");
        let first = new_lane(&mut book, &mut ids, &a);
        assert!(first.after.is_none(), "the first lane waits for nothing");
        assert!(matches!(
            book.lane_for(&a, ids.next(), sink),
            LaneFor::Open(_)
        ));
        assert_eq!(book.open_count(), 1);
    }

    #[test]
    fn a_new_lane_waits_until_the_previous_one_to_its_actor_is_done() {
        let mut book = LaneBook::default();
        let mut ids = Ids(0);
        let a: Arc<str> = Arc::from("a");
        let first = new_lane(&mut book, &mut ids, &a);
        // The first lane closes for being idle while the receiver has not read it all.
        first.sink.close(actormesh_transport::sink::IDLE_CLOSED);
        let second = new_lane(&mut book, &mut ids, &a);
        assert_ne!(second.id, first.id);
        let after = second.after.expect("the second lane waits for the first");
        assert!(!after.is_set());
        book.done(second.id);
        assert!(
            !after.is_set(),
            "only the first lane's LaneDone releases it"
        );
        book.done(first.id);
        assert!(after.is_set());
        assert!(first.drained.is_set());
    }

    #[test]
    fn lanes_to_other_actors_do_not_wait() {
        let mut book = LaneBook::default();
        let mut ids = Ids(0);
        let first = new_lane(&mut book, &mut ids, &Arc::from("a"));
        first.sink.close(actormesh_transport::sink::IDLE_CLOSED);
        let other = new_lane(&mut book, &mut ids, &Arc::from("b"));
        assert!(other.after.is_none());
    }

    #[test]
    fn a_lane_whose_writer_ended_holds_back_nothing() {
        let mut book = LaneBook::default();
        let mut ids = Ids(0);
        let a: Arc<str> = Arc::from("a");
        let first = new_lane(&mut book, &mut ids, &a);
        first.sink.close("the stream failed");
        book.ended(&a, first.id);
        assert!(first.drained.is_set());
        assert_eq!(book.filed(), 0, "an ended lane is forgotten");
        assert!(new_lane(&mut book, &mut ids, &a).after.is_none());
    }

    #[test]
    fn a_lost_link_releases_the_next_lane() {
        let mut book = LaneBook::default();
        let mut ids = Ids(0);
        let a: Arc<str> = Arc::from("a");
        let first = new_lane(&mut book, &mut ids, &a);
        book.link_lost();
        assert!(new_lane(&mut book, &mut ids, &a).after.is_none());
        // The old lane's writer still reports its end; it finds nothing newer to drop.
        book.ended(&a, first.id);
        assert!(matches!(
            book.lane_for(&a, ids.next(), sink),
            LaneFor::Open(_)
        ));
    }

    #[test]
    fn a_replaced_link_finishes_every_lane_and_the_next_waits_for_it() {
        let mut book = LaneBook::default();
        let mut ids = Ids(0);
        let a: Arc<str> = Arc::from("a");
        let first = new_lane(&mut book, &mut ids, &a);
        let waits = book.finish_all();
        assert_eq!(waits.len(), 1);
        assert!(first.sink.is_closed());
        let second = new_lane(&mut book, &mut ids, &a);
        assert!(second
            .after
            .is_some_and(|d| Arc::ptr_eq(&d, &first.drained)));
    }
}
