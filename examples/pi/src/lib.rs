//! Monte Carlo π as a Mesos-style batch framework on actormesh.
//!
//! The job is split into parts; each samples `points` points of the unit square from its
//! own seed and counts those inside the quarter circle. Half the parts run as **command
//! tasks** (`pi sample`, an OS process whose stdout the framework reads back through the
//! master), half as **actor tasks** (a [`Sampler`] instance on an agent that hosts
//! [`SAMPLER`], asked over the mesh). π ≈ 4 · inside / points.
//!
//! [`Job`] is the framework's plain core: it decides what to launch on which offer, what
//! to decline and for how long, and what each status update means. It does no I/O, so
//! its rules are tested here without a cluster; `pi framework` (in `main.rs`) carries its
//! decisions out with [`actormesh::framework::Scheduler`].

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use actormesh::framework::{Offer, TaskLaunch};
use actormesh::resources::Resources;
use actormesh::task::{TaskState, TaskStatus};
use actormesh::RemoteMessage;
use serde::{Deserialize, Serialize};

/// The actor type of actor tasks; `pi agent` hosts it.
pub const SAMPLER: &str = "pi-sampler";

/// How many points of `points`, drawn from `seed`, fall inside the quarter circle.
pub fn count_inside(seed: u64, points: u64) -> u64 {
    let mut rng = SplitMix64(seed);
    let mut inside = 0;
    for _ in 0..points {
        let (x, y) = (rng.unit(), rng.unit());
        if x * x + y * y <= 1.0 {
            inside += 1;
        }
    }
    inside
}

/// SplitMix64: small, fast and the same on every machine, so each part's count depends on
/// its seed alone (a part run twice counts the same).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In [0, 1), from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One part's count, as `pi sample` prints it and a [`Sampler`] answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hits {
    /// Points inside the quarter circle.
    pub inside: u64,
    /// Points drawn.
    pub points: u64,
}

/// Asks a [`Sampler`] for one part's count; it answers, then stops (its task Finishes).
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "pi.Sample/v1", reply = Hits)]
pub struct Sample {
    /// The part's seed.
    pub seed: u64,
    /// How many points.
    pub points: u64,
}

/// The actor task: counts one part when asked, then stops, which ends its task as
/// Finished.
#[derive(Debug)]
pub struct Sampler;

impl Actor for Sampler {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Sample> for Sampler {
    type Result = MessageResult<Sample>;
    fn handle(&mut self, m: Sample, ctx: &mut Context<Self>) -> Self::Result {
        let inside = count_inside(m.seed, m.points);
        ctx.stop();
        MessageResult(Hits {
            inside,
            points: m.points,
        })
    }
}

/// The actor types `pi agent` hosts.
pub fn host() -> actormesh::agent::ActorHost {
    actormesh::agent::ActorHost::new().with(SAMPLER, || Sampler)
}

/// How a part runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// `pi sample`, as a command task.
    Command,
    /// A [`Sampler`], as an actor task.
    Actor,
}

/// Where a part is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartState {
    /// Not running: to launch on the next offer that fits.
    Waiting,
    /// Launched as task `task_id` on the agent at `agent_addr`.
    Launched {
        /// The task id (the part, its kind and the attempt).
        task_id: String,
        /// The agent's id.
        agent_id: String,
        /// The agent's mesh address (where an actor task's instance answers).
        agent_addr: SocketAddr,
    },
    /// Counted.
    Done(Hits),
}

/// One part of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// How it runs.
    pub kind: Kind,
    /// Its seed.
    pub seed: u64,
    /// How many points it draws.
    pub points: u64,
    /// How many times it was launched.
    pub attempts: u32,
    /// Where it is.
    pub state: PartState,
}

/// An offer's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Launch these tasks with the offer.
    Accept {
        /// The offer.
        offer_id: String,
        /// Its agent.
        agent_id: String,
        /// The tasks.
        launches: Vec<TaskLaunch>,
    },
    /// Decline it; do not offer this agent again for `refuse_for` (a decline filter).
    Decline {
        /// The offer.
        offer_id: String,
        /// Its agent.
        agent_id: String,
        /// The filter's length.
        refuse_for: Duration,
        /// Why, for people.
        why: &'static str,
    },
}

/// What a status update asks of the framework.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing (acknowledge it and go on).
    Nothing,
    /// An actor task runs: ask its instance for the count.
    Ask {
        /// The task.
        task_id: String,
        /// Its agent's mesh address.
        agent_addr: SocketAddr,
        /// What to ask.
        sample: (u64, u64),
    },
    /// A command task finished: read its stdout for the count (before acknowledging: the
    /// master forgets an acknowledged end).
    ReadOutput {
        /// The task.
        task_id: String,
    },
    /// A part failed and waits again: ask for offers again (clearing decline filters).
    Revive,
    /// A part failed too often: the job fails.
    GiveUp(String),
}

/// The job: its parts and how each runs. Serialized to a file after every change, so a
/// framework that fails over knows which parts are counted and which tasks it launched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The parts, in launch order.
    pub parts: Vec<Part>,
    /// The cpus each task takes.
    pub task_cpus: f64,
    /// The `pi` binary command tasks run (`pi sample`).
    pub program: String,
    /// Launches per part before the job fails.
    pub max_attempts: u32,
}

/// A decline filter while parts wait but this agent can run none of them (it hosts no
/// sampler, and only actor parts wait).
pub const REFUSE_UNFIT: Duration = Duration::from_secs(30);
/// A decline filter once nothing waits; a failed part revives offers.
pub const REFUSE_IDLE: Duration = Duration::from_secs(120);
/// A decline filter for an offer too small for one task: its agent may free more soon.
pub const REFUSE_SMALL: Duration = Duration::from_secs(1);

impl Job {
    /// `parts` parts of `points` points each, alternately command and actor tasks, with
    /// seeds `seed`, `seed + 1`, …
    pub fn new(parts: u32, points: u64, seed: u64, program: &str) -> Job {
        let parts = (0..parts)
            .map(|i| Part {
                kind: if i % 2 == 0 {
                    Kind::Command
                } else {
                    Kind::Actor
                },
                seed: seed.wrapping_add(u64::from(i)),
                points,
                attempts: 0,
                state: PartState::Waiting,
            })
            .collect();
        Job {
            parts,
            task_cpus: 0.5,
            program: program.to_string(),
            max_attempts: 3,
        }
    }

    /// The task id of part `index`'s next attempt: `cmd-3-1`, `actor-4-2`.
    fn task_id(&self, index: usize) -> String {
        let p = &self.parts[index];
        let kind = match p.kind {
            Kind::Command => "cmd",
            Kind::Actor => "actor",
        };
        format!("{kind}-{index}-{}", p.attempts + 1)
    }

    /// Answers each offer: launches the waiting parts that fit (actor parts only where
    /// the agent hosts [`SAMPLER`]), or declines with a filter that says how long this
    /// agent is of no use.
    pub fn plan(&mut self, offers: &[Offer]) -> Vec<Answer> {
        offers.iter().map(|o| self.plan_one(o)).collect()
    }

    fn plan_one(&mut self, o: &Offer) -> Answer {
        let hosts_sampler = o.actor_types.iter().any(|t| t == SAMPLER);
        let mut cpus = o.resources.amount("cpus");
        let mut launches = Vec::new();
        let mut fits_kind = false;
        for i in 0..self.parts.len() {
            let p = &self.parts[i];
            if p.state != PartState::Waiting || (p.kind == Kind::Actor && !hosts_sampler) {
                continue;
            }
            fits_kind = true;
            if cpus + 1e-9 < self.task_cpus {
                break;
            }
            cpus -= self.task_cpus;
            let task_id = self.task_id(i);
            let resources = Resources {
                scalars: [("cpus".to_string(), self.task_cpus)].into(),
                ..Default::default()
            };
            let p = &self.parts[i];
            launches.push(match p.kind {
                Kind::Command => {
                    let (seed, points) = (p.seed.to_string(), p.points.to_string());
                    let args = ["sample", "--seed", &seed, "--points", &points];
                    TaskLaunch::command(&task_id, &self.program, &args, resources)
                }
                Kind::Actor => TaskLaunch::actor(&task_id, SAMPLER, resources),
            });
            let p = &mut self.parts[i];
            p.attempts += 1;
            p.state = PartState::Launched {
                task_id,
                agent_id: o.agent_id.clone(),
                agent_addr: o.agent_addr,
            };
        }
        if !launches.is_empty() {
            return Answer::Accept {
                offer_id: o.offer_id.clone(),
                agent_id: o.agent_id.clone(),
                launches,
            };
        }
        let waiting = self.parts.iter().any(|p| p.state == PartState::Waiting);
        let (refuse_for, why) = if !waiting {
            (REFUSE_IDLE, "no part waits")
        } else if !fits_kind {
            (
                REFUSE_UNFIT,
                "only actor parts wait and this agent hosts no pi-sampler",
            )
        } else {
            (REFUSE_SMALL, "too small for one task")
        };
        Answer::Decline {
            offer_id: o.offer_id.clone(),
            agent_id: o.agent_id.clone(),
            refuse_for,
            why,
        }
    }

    /// The part running as `task_id`, if one is.
    fn launched(&self, task_id: &str) -> Option<usize> {
        self.parts.iter().position(
            |p| matches!(&p.state, PartState::Launched { task_id: t, .. } if t == task_id),
        )
    }

    /// What status update `st` means for the job.
    pub fn on_status(&mut self, st: &TaskStatus) -> Next {
        // Updates of an earlier attempt, or of a part already counted (an actor task
        // Finishes after it answered), change nothing.
        let Some(i) = self.launched(&st.task_id) else {
            return Next::Nothing;
        };
        let p = &self.parts[i];
        let PartState::Launched { agent_addr, .. } = p.state else {
            return Next::Nothing;
        };
        match (st.state, p.kind) {
            (TaskState::Running, Kind::Actor) => Next::Ask {
                task_id: st.task_id.clone(),
                agent_addr,
                sample: (p.seed, p.points),
            },
            (TaskState::Finished, Kind::Command) => Next::ReadOutput {
                task_id: st.task_id.clone(),
            },
            // Finished without answering (its answer was lost with a framework that
            // failed over, say): count it again.
            (TaskState::Finished, Kind::Actor) => {
                self.retry(&st.task_id, "it finished without its count reaching us")
            }
            (s, _) if s.is_terminal() => {
                let why = format!("it ended {s:?}: {}", st.message);
                self.retry(&st.task_id, &why)
            }
            // Staging, Starting, Running command tasks; Unreachable ones may come back.
            _ => Next::Nothing,
        }
    }

    /// Part `task_id` could not be counted (`why`): it waits again, unless it was launched
    /// too often.
    pub fn retry(&mut self, task_id: &str, why: &str) -> Next {
        let Some(i) = self.launched(task_id) else {
            return Next::Nothing;
        };
        let p = &mut self.parts[i];
        if p.attempts >= self.max_attempts {
            return Next::GiveUp(format!(
                "part {i} failed {} times; the last, task {task_id}: {why}",
                p.attempts
            ));
        }
        p.state = PartState::Waiting;
        Next::Revive
    }

    /// Records task `task_id`'s count; `false` if no running part is that task (a count
    /// that came twice, say), which then is not counted again, or if the count is not of
    /// the part's number of points.
    pub fn record(&mut self, task_id: &str, hits: Hits) -> bool {
        let Some(i) = self.launched(task_id) else {
            return false;
        };
        let p = &mut self.parts[i];
        if hits.points != p.points || hits.inside > hits.points {
            return false;
        }
        p.state = PartState::Done(hits);
        true
    }

    /// How many parts are counted.
    pub fn done(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| matches!(p.state, PartState::Done(_)))
            .count()
    }

    /// π from every part, once all are counted.
    pub fn estimate(&self) -> Option<f64> {
        let mut inside = 0u64;
        let mut points = 0u64;
        for p in &self.parts {
            let PartState::Done(h) = p.state else {
                return None;
            };
            inside += h.inside;
            points += h.points;
        }
        (points > 0).then(|| 4.0 * inside as f64 / points as f64)
    }

    /// The task ids launched and not yet counted (to reconcile after a failover).
    pub fn outstanding(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|p| match &p.state {
                PartState::Launched { task_id, .. } => Some(task_id.clone()),
                _ => None,
            })
            .collect()
    }
}

/// π from `parts` parts of `points` from `seed`, counted here: what a whole job must give.
pub fn expected(parts: u32, points: u64, seed: u64) -> f64 {
    let inside: u64 = (0..parts)
        .map(|i| count_inside(seed.wrapping_add(u64::from(i)), points))
        .sum();
    4.0 * inside as f64 / (u64::from(parts) * points) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn offer(id: &str, agent: &str, cpus: f64, sampler: bool) -> Offer {
        Offer {
            offer_id: id.into(),
            agent_id: agent.into(),
            agent_addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
            resources: Resources {
                scalars: [("cpus".to_string(), cpus)].into(),
                ..Default::default()
            },
            attrs: BTreeMap::new(),
            actor_types: if sampler {
                vec![SAMPLER.into()]
            } else {
                vec!["echo".into()]
            },
        }
    }

    fn status(task: &str, state: TaskState) -> TaskStatus {
        TaskStatus {
            task_id: task.into(),
            agent_id: "a".into(),
            state,
            message: "exited with code 1".into(),
            uuid: 7,
            healthy: None,
        }
    }

    fn hits(inside: u64, points: u64) -> Hits {
        Hits { inside, points }
    }

    fn launched_ids(a: &Answer) -> Vec<String> {
        match a {
            Answer::Accept { launches, .. } => launches.iter().map(|l| l.task_id.clone()).collect(),
            Answer::Decline { .. } => vec![],
        }
    }

    #[test]
    fn the_count_depends_on_the_seed_alone_and_approaches_pi() {
        assert_eq!(count_inside(7, 10_000), count_inside(7, 10_000));
        assert_ne!(count_inside(7, 10_000), count_inside(8, 10_000));
        let pi = expected(4, 50_000, 1);
        assert!((pi - std::f64::consts::PI).abs() < 0.02, "{pi}");
    }

    #[test]
    fn actor_parts_go_only_to_agents_that_host_the_sampler_and_offers_are_filled_by_cpus() {
        let mut job = Job::new(4, 10, 0, "/bin/pi");
        // No sampler: the command parts only, as many as the cpus hold.
        let a = job.plan(&[offer("o1", "plain", 0.9, false)]);
        assert_eq!(launched_ids(&a[0]), ["cmd-0-1"]);
        let a = job.plan(&[offer("o2", "plain", 2.0, false)]);
        assert_eq!(launched_ids(&a[0]), ["cmd-2-1"]);
        // Only actor parts wait now: an agent without the sampler is declined for long.
        let a = job.plan(&[offer("o3", "plain", 2.0, false)]);
        assert!(
            matches!(&a[0], Answer::Decline { refuse_for, .. } if *refuse_for == REFUSE_UNFIT),
            "{a:?}"
        );
        let a = job.plan(&[offer("o4", "sampling", 2.0, true)]);
        assert_eq!(launched_ids(&a[0]), ["actor-1-1", "actor-3-1"]);
        let Answer::Accept { launches, .. } = &a[0] else {
            unreachable!()
        };
        assert_eq!(
            launches[0].kind,
            actormesh::framework::TaskKind::Actor {
                actor_type: SAMPLER.into()
            }
        );
        // Nothing waits: declined for longer still.
        let a = job.plan(&[offer("o5", "sampling", 2.0, true)]);
        assert!(
            matches!(&a[0], Answer::Decline { refuse_for, .. } if *refuse_for == REFUSE_IDLE),
            "{a:?}"
        );
        // Too small for one task, while a fitting part waits: a short filter.
        let mut job = Job::new(1, 10, 0, "/bin/pi");
        let a = job.plan(&[offer("o6", "plain", 0.4, false)]);
        assert!(
            matches!(&a[0], Answer::Decline { refuse_for, .. } if *refuse_for == REFUSE_SMALL),
            "{a:?}"
        );
    }

    #[test]
    fn a_command_task_is_read_when_it_finishes_and_an_actor_task_asked_when_it_runs() {
        let mut job = Job::new(2, 10, 5, "/bin/pi");
        job.plan(&[offer("o", "s", 1.0, true)]);
        assert_eq!(
            job.on_status(&status("cmd-0-1", TaskState::Running)),
            Next::Nothing
        );
        assert_eq!(
            job.on_status(&status("cmd-0-1", TaskState::Finished)),
            Next::ReadOutput {
                task_id: "cmd-0-1".into()
            }
        );
        assert_eq!(
            job.on_status(&status("actor-1-1", TaskState::Running)),
            Next::Ask {
                task_id: "actor-1-1".into(),
                agent_addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
                sample: (6, 10)
            }
        );
        assert!(job.record("actor-1-1", hits(8, 10)));
        // Its instance stops once it answered: that Finished changes nothing.
        assert_eq!(
            job.on_status(&status("actor-1-1", TaskState::Finished)),
            Next::Nothing
        );
        assert_eq!(job.estimate(), None, "one part is not counted yet");
        assert!(job.record("cmd-0-1", hits(7, 10)));
        assert_eq!(job.estimate(), Some(4.0 * 15.0 / 20.0));
    }

    #[test]
    fn a_count_that_comes_twice_is_counted_once() {
        let mut job = Job::new(1, 10, 0, "/bin/pi");
        job.plan(&[offer("o", "s", 1.0, false)]);
        assert!(job.record("cmd-0-1", hits(7, 10)));
        assert!(!job.record("cmd-0-1", hits(7, 10)));
        assert_eq!(job.done(), 1);
        assert_eq!(
            job.on_status(&status("cmd-0-1", TaskState::Finished)),
            Next::Nothing
        );
        // A count of another size is not this part's.
        let mut job = Job::new(1, 10, 0, "/bin/pi");
        job.plan(&[offer("o", "s", 1.0, false)]);
        assert!(!job.record("cmd-0-1", hits(7, 11)));
        assert!(!job.record("cmd-0-1", hits(11, 10)));
        assert_eq!(job.done(), 0);
    }

    #[test]
    fn a_failed_part_is_launched_again_under_a_new_task_id_until_its_attempts_run_out() {
        let mut job = Job::new(1, 10, 0, "/bin/pi");
        job.max_attempts = 2;
        job.plan(&[offer("o1", "s", 1.0, false)]);
        assert_eq!(
            job.on_status(&status("cmd-0-1", TaskState::Failed)),
            Next::Revive
        );
        assert_eq!(job.outstanding(), Vec::<String>::new());
        let a = job.plan(&[offer("o2", "s", 1.0, false)]);
        assert_eq!(launched_ids(&a[0]), ["cmd-0-2"]);
        // The first attempt's late updates are not the part's any more.
        assert_eq!(
            job.on_status(&status("cmd-0-1", TaskState::Lost)),
            Next::Nothing
        );
        assert_eq!(job.outstanding(), ["cmd-0-2"]);
        // Unreachable may come back: the part stays launched.
        assert_eq!(
            job.on_status(&status("cmd-0-2", TaskState::Unreachable)),
            Next::Nothing
        );
        assert!(matches!(
            job.on_status(&status("cmd-0-2", TaskState::Lost)),
            Next::GiveUp(why) if why.contains("part 0 failed 2 times") && why.contains("Lost")
        ));
    }

    #[test]
    fn an_actor_task_that_finished_without_its_count_reaching_the_framework_is_run_again() {
        let mut job = Job::new(2, 10, 0, "/bin/pi");
        job.plan(&[offer("o", "s", 1.0, true)]);
        assert_eq!(
            job.on_status(&status("actor-1-1", TaskState::Finished)),
            Next::Revive
        );
        let a = job.plan(&[offer("o2", "s", 1.0, true)]);
        assert_eq!(launched_ids(&a[0]), ["actor-1-2"]);
    }
}
