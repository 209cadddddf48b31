//! The agent's at-least-once report protocol, as plain state.
//!
//! Every task status report goes to the master again and again (capped backoff) until the
//! master answers it. An end the master asks to keep (its framework has not acknowledged
//! it yet) stays here, goes again at each registration, and is forgotten only when the
//! master releases it; a release that overtakes the master's answer to the report it
//! releases is remembered while that end is on its way. The book does no I/O and reads no
//! clock: time is passed in, and it says which reports to send and which marks to make.
//! `AgentGate` carries that out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::protocol::TaskStatusReport;
use crate::task::{TaskState, TaskStatus};

/// The wait before a report that was not delivered goes again; doubled after each try.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between tries.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One try at sending one report. Its answer names it, so a late answer to an earlier try
/// is not taken for the answer to the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    uuid: u64,
    number: u64,
}

/// How the master answered one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterAnswer {
    /// Taken; keep it and send it again at each registration until the master releases it.
    Keep,
    /// Taken.
    Taken,
    /// Refused for good (this agent was removed, or may not report this): dropped.
    Refused,
    /// Not delivered, or refused for now: to go again after the backoff.
    NotDelivered,
}

/// A report on its way: a try is in flight, or the next one is due at `due`.
#[derive(Debug)]
struct Outgoing {
    report: TaskStatusReport,
    mark: Option<PathBuf>,
    in_flight: Option<u64>,
    due: Instant,
    backoff: Duration,
}

impl Outgoing {
    fn new(report: TaskStatusReport, mark: Option<PathBuf>, now: Instant) -> Self {
        Self {
            report,
            mark,
            in_flight: None,
            due: now,
            backoff: RETRY_FIRST,
        }
    }
}

/// An agent's task status reports, from the first try until the master is done with them.
#[derive(Debug)]
pub struct ReportBook {
    agent_id: String,
    next_uuid: u64,
    next_attempt: u64,
    /// By uuid, so reports go in the order they were made.
    outgoing: BTreeMap<u64, Outgoing>,
    /// The outgoing reports with no try in flight, by when they are due: what `due` sends,
    /// without passing over the reports in flight.
    waiting: BTreeSet<(Instant, u64)>,
    /// How many ends of each task are outgoing (almost always one).
    ends_outgoing: BTreeMap<String, usize>,
    /// Ends the master asked to keep, by task id, with the mark to make on release.
    kept: BTreeMap<String, (TaskStatusReport, Option<PathBuf>)>,
    /// Tasks whose end the master released while an end of theirs was still on its way
    /// (the framework acknowledged before the master's answer got here): not to be kept.
    released_early: BTreeSet<String>,
}

impl ReportBook {
    /// An empty book for the reports of agent `agent_id`.
    pub fn new(agent_id: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            next_uuid: 1,
            next_attempt: 1,
            outgoing: BTreeMap::new(),
            waiting: BTreeSet::new(),
            ends_outgoing: BTreeMap::new(),
            kept: BTreeMap::new(),
            released_early: BTreeSet::new(),
        }
    }

    /// Files a new report on task `task_id`, due at once (see [`Self::due`]), and returns its
    /// uuid. `mark` is made once the master is done with the report: when it takes it, or,
    /// if it asks to keep it, when it releases it.
    pub fn report(
        &mut self,
        task_id: &str,
        state: TaskState,
        message: String,
        healthy: Option<bool>,
        mark: Option<PathBuf>,
        now: Instant,
    ) -> u64 {
        let uuid = self.next_uuid;
        self.next_uuid += 1;
        let report = TaskStatusReport {
            agent_id: self.agent_id.clone(),
            status: TaskStatus {
                task_id: task_id.to_string(),
                agent_id: self.agent_id.clone(),
                state,
                message,
                uuid,
                healthy,
            },
        };
        self.file(report, mark, now);
        uuid
    }

    /// Puts `report` on its way, due at `now`.
    fn file(&mut self, report: TaskStatusReport, mark: Option<PathBuf>, now: Instant) {
        let uuid = report.status.uuid;
        if report.status.state.is_terminal() {
            *self
                .ends_outgoing
                .entry(report.status.task_id.clone())
                .or_default() += 1;
        }
        self.waiting.insert((now, uuid));
        self.outgoing.insert(uuid, Outgoing::new(report, mark, now));
    }

    /// Takes report `uuid` off its way.
    fn unfile(&mut self, uuid: u64) -> Option<Outgoing> {
        let o = self.outgoing.remove(&uuid)?;
        self.waiting.remove(&(o.due, uuid));
        if o.report.status.state.is_terminal() {
            if let Some(n) = self.ends_outgoing.get_mut(&o.report.status.task_id) {
                *n -= 1;
                if *n == 0 {
                    self.ends_outgoing.remove(&o.report.status.task_id);
                }
            }
        }
        Some(o)
    }

    /// The reports to send at `now`, each with the try it is: pass each one's answer to
    /// [`Self::answered`]. A report with a try in flight is not sent again until answered.
    pub fn due(&mut self, now: Instant) -> Vec<(Attempt, TaskStatusReport)> {
        let mut due: Vec<u64> = Vec::new();
        while let Some(&(at, uuid)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            due.push(uuid);
        }
        // In the order the reports were made, as the master expects a task's states.
        due.sort_unstable();
        let mut send = Vec::with_capacity(due.len());
        for uuid in due {
            if let Some(o) = self.outgoing.get_mut(&uuid) {
                let number = self.next_attempt;
                self.next_attempt += 1;
                o.in_flight = Some(number);
                send.push((Attempt { uuid, number }, o.report.clone()));
            }
        }
        send
    }

    /// The master answered `attempt` at `now`. Returns the mark to make, if the report is
    /// done with and has one. An answer to a try that is not in flight is ignored.
    pub fn answered(
        &mut self,
        attempt: Attempt,
        answer: MasterAnswer,
        now: Instant,
    ) -> Option<PathBuf> {
        let o = self
            .outgoing
            .get_mut(&attempt.uuid)
            .filter(|o| o.in_flight == Some(attempt.number))?;
        o.in_flight = None;
        if answer == MasterAnswer::NotDelivered {
            o.due = now + o.backoff;
            o.backoff = (o.backoff * 2).min(RETRY_MAX);
            self.waiting.insert((o.due, attempt.uuid));
            return None;
        }
        let o = self.unfile(attempt.uuid)?;
        let task_id = o.report.status.task_id.clone();
        let mark = match answer {
            MasterAnswer::Keep if !self.released_early.contains(&task_id) => {
                self.kept.insert(task_id.clone(), (o.report, o.mark));
                None
            }
            MasterAnswer::Keep | MasterAnswer::Taken => o.mark,
            MasterAnswer::Refused | MasterAnswer::NotDelivered => None,
        };
        if !self.end_on_its_way(&task_id) {
            self.released_early.remove(&task_id);
        }
        mark
    }

    /// The master released the end of task `task_id` (its framework acknowledged it).
    /// Returns the mark to make, if the end was kept with one.
    pub fn released(&mut self, task_id: &str) -> Option<PathBuf> {
        if let Some((_, mark)) = self.kept.remove(task_id) {
            return mark;
        }
        // Only a release of an end still on its way is remembered; any other is stale.
        if self.end_on_its_way(task_id) {
            self.released_early.insert(task_id.to_string());
        }
        None
    }

    /// The agent registered again at `now`: the kept ends are due at once, since the master
    /// may be a new one that never saw them.
    pub fn registered(&mut self, now: Instant) {
        for (report, mark) in std::mem::take(&mut self.kept).into_values() {
            self.file(report, mark, now);
        }
    }

    fn end_on_its_way(&self, task_id: &str) -> bool {
        self.ends_outgoing.contains_key(task_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn book() -> ReportBook {
        ReportBook::new("a1")
    }

    fn mark(task: &str) -> Option<PathBuf> {
        Some(PathBuf::from(format!("/sandboxes/{task}/end_reported")))
    }

    /// The one report due at `now`, which must be the report `uuid`.
    fn sent_one(book: &mut ReportBook, uuid: u64, now: Instant) -> Attempt {
        let due = book.due(now);
        let uuids: Vec<u64> = due.iter().map(|(_, r)| r.status.uuid).collect();
        assert_eq!(uuids, [uuid], "due at {now:?}");
        due[0].0
    }

    fn due_uuids(book: &mut ReportBook, now: Instant) -> Vec<u64> {
        book.due(now).iter().map(|(_, r)| r.status.uuid).collect()
    }

    #[test]
    fn a_report_goes_again_with_backoff_until_the_master_takes_it() {
        let (mut b, t0) = (book(), Instant::now());
        let uuid = b.report("t", TaskState::Running, "pid 7".into(), None, None, t0);
        let first = b.due(t0);
        assert_eq!(first.len(), 1);
        let (attempt, report) = &first[0];
        assert_eq!((report.agent_id.as_str(), report.status.uuid), ("a1", uuid));
        assert_eq!(report.status.state, TaskState::Running);
        assert!(b.due(t0).is_empty(), "a try in flight is not repeated");

        assert_eq!(b.answered(*attempt, MasterAnswer::NotDelivered, t0), None);
        assert!(b.due(t0 + 99 * MS).is_empty(), "goes again after 100 ms");
        let second = sent_one(&mut b, uuid, t0 + 100 * MS);
        let t1 = t0 + 100 * MS;
        b.answered(second, MasterAnswer::NotDelivered, t1);
        assert!(b.due(t1 + 199 * MS).is_empty(), "the backoff doubles");
        let third = sent_one(&mut b, uuid, t1 + 200 * MS);

        b.answered(third, MasterAnswer::Taken, t1 + 200 * MS);
        b.registered(t1 + 300 * MS);
        assert!(
            due_uuids(&mut b, t1 + 10_000 * MS).is_empty(),
            "taken: done"
        );
    }

    #[test]
    fn the_backoff_stops_growing_at_five_seconds() {
        let (mut b, mut now) = (book(), Instant::now());
        let uuid = b.report("t", TaskState::Running, String::new(), None, None, now);
        for _ in 0..10 {
            let a = sent_one(&mut b, uuid, now);
            b.answered(a, MasterAnswer::NotDelivered, now);
            now += RETRY_MAX;
        }
        assert_eq!(due_uuids(&mut b, now), [uuid]);
    }

    #[test]
    fn a_taken_end_is_marked_and_a_refused_one_dropped_unmarked() {
        let (mut b, t0) = (book(), Instant::now());
        let taken = b.report("t", TaskState::Finished, String::new(), None, mark("t"), t0);
        let refused = b.report("u", TaskState::Failed, String::new(), None, mark("u"), t0);
        let due = b.due(t0);
        assert_eq!(due.len(), 2);
        let (a_taken, a_refused) = (due[0].0, due[1].0);
        assert_eq!(due[0].1.status.uuid, taken);
        assert_eq!(due[1].1.status.uuid, refused);
        assert_eq!(b.answered(a_taken, MasterAnswer::Taken, t0), mark("t"));
        assert_eq!(b.answered(a_refused, MasterAnswer::Refused, t0), None);
        b.registered(t0);
        assert!(due_uuids(&mut b, t0 + 10_000 * MS).is_empty());
    }

    #[test]
    fn a_kept_end_goes_again_at_each_registration_until_released() {
        let (mut b, t0) = (book(), Instant::now());
        let uuid = b.report("t", TaskState::Failed, "exit 3".into(), None, mark("t"), t0);
        let a = sent_one(&mut b, uuid, t0);
        assert_eq!(
            b.answered(a, MasterAnswer::Keep, t0),
            None,
            "marked only on release"
        );
        assert!(
            due_uuids(&mut b, t0 + 60_000 * MS).is_empty(),
            "kept, not retried"
        );

        for round in 1..=2 {
            let now = t0 + round * 1000 * MS;
            b.registered(now);
            let again = sent_one(&mut b, uuid, now);
            assert_eq!(b.answered(again, MasterAnswer::Keep, now), None);
        }
        assert_eq!(b.released("t"), mark("t"));
        b.registered(t0 + 5000 * MS);
        assert!(
            due_uuids(&mut b, t0 + 5000 * MS).is_empty(),
            "released: forgotten"
        );
        assert_eq!(
            b.released("t"),
            None,
            "a second release marks nothing again"
        );
    }

    #[test]
    fn a_release_that_overtakes_the_answer_to_its_report_is_remembered() {
        let (mut b, t0) = (book(), Instant::now());
        let uuid = b.report("t", TaskState::Finished, String::new(), None, mark("t"), t0);
        let a = sent_one(&mut b, uuid, t0);
        assert_eq!(b.released("t"), None, "nothing kept yet");
        assert_eq!(
            b.answered(a, MasterAnswer::Keep, t0),
            mark("t"),
            "the release applies"
        );
        b.registered(t0);
        assert!(due_uuids(&mut b, t0).is_empty(), "not kept");
    }

    #[test]
    fn a_release_between_tries_is_remembered_until_the_end_is_answered() {
        let (mut b, t0) = (book(), Instant::now());
        let uuid = b.report("t", TaskState::Killed, String::new(), None, mark("t"), t0);
        let a = sent_one(&mut b, uuid, t0);
        // The master took it but its answer was lost; the framework acknowledged meanwhile.
        b.answered(a, MasterAnswer::NotDelivered, t0);
        b.released("t");
        let again = sent_one(&mut b, uuid, t0 + 100 * MS);
        assert_eq!(b.answered(again, MasterAnswer::Keep, t0), mark("t"));

        // Settled: the release is forgotten, so a later end of the task is kept.
        let later = b.report("t", TaskState::Failed, String::new(), None, None, t0);
        let a = sent_one(&mut b, later, t0);
        b.answered(a, MasterAnswer::Keep, t0);
        b.registered(t0);
        assert_eq!(due_uuids(&mut b, t0), [later]);
    }

    #[test]
    fn an_early_release_holds_while_any_end_of_the_task_is_on_its_way() {
        let (mut b, t0) = (book(), Instant::now());
        b.report("t", TaskState::Running, String::new(), None, None, t0);
        b.report("t", TaskState::Finished, String::new(), None, mark("t"), t0);
        let due = b.due(t0);
        let (a_running, a_ended) = (due[0].0, due[1].0);
        b.released("t");
        // Answers come back out of order; the Running report's does not end the release.
        b.answered(a_running, MasterAnswer::Taken, t0);
        assert_eq!(b.answered(a_ended, MasterAnswer::Keep, t0), mark("t"));
        b.registered(t0);
        assert!(due_uuids(&mut b, t0).is_empty());
    }

    #[test]
    fn an_answer_to_an_earlier_try_or_a_second_answer_is_ignored() {
        let (mut b, t0) = (book(), Instant::now());
        let uuid = b.report("t", TaskState::Finished, String::new(), None, mark("t"), t0);
        let first = sent_one(&mut b, uuid, t0);
        b.answered(first, MasterAnswer::NotDelivered, t0);
        let second = sent_one(&mut b, uuid, t0 + 100 * MS);
        // A late answer to the first try does not settle the second.
        assert_eq!(b.answered(first, MasterAnswer::Taken, t0), None);
        assert_eq!(b.answered(second, MasterAnswer::Keep, t0), None);
        b.registered(t0);
        let resent = sent_one(&mut b, uuid, t0);
        // A second answer to the try before the registration does not settle the resend.
        assert_eq!(b.answered(second, MasterAnswer::Taken, t0), None);
        assert_eq!(b.answered(resent, MasterAnswer::Keep, t0), None);
        b.registered(t0);
        assert_eq!(due_uuids(&mut b, t0), [uuid], "still kept");
    }

    #[test]
    fn a_release_for_a_task_without_an_end_on_its_way_changes_nothing() {
        let (mut b, t0) = (book(), Instant::now());
        assert_eq!(b.released("ghost"), None);
        let running = b.report("t", TaskState::Running, String::new(), None, None, t0);
        let a_running = sent_one(&mut b, running, t0);
        // A stale release, while only a Running report is on its way.
        assert_eq!(b.released("t"), None);
        let ended = b.report("t", TaskState::Finished, String::new(), None, mark("t"), t0);
        let a_ended = sent_one(&mut b, ended, t0);
        b.answered(a_running, MasterAnswer::Taken, t0);
        assert_eq!(b.answered(a_ended, MasterAnswer::Keep, t0), None, "kept");
        let ghost = b.report("ghost", TaskState::Lost, String::new(), None, None, t0);
        let a_ghost = sent_one(&mut b, ghost, t0);
        b.answered(a_ghost, MasterAnswer::Keep, t0);
        b.registered(t0);
        assert_eq!(due_uuids(&mut b, t0), [ended, ghost]);
    }
}
