//! [`ServiceRegistry`]: the versioned registry of services and their ready endpoints, and
//! the revoked identities, with a bounded log of changes so that a proxy that holds a
//! recent version gets a delta and any other a full snapshot.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use actormesh::mesh::protocol::{Push, PushKind};
use actormesh::mesh::{MeshSettings, Revocation, Service, ServiceName};

/// Changes kept in the log by default: a proxy further behind gets a full snapshot.
pub const DEFAULT_LOG_LEN: usize = 1024;

/// One version's change.
#[derive(Debug, Clone)]
struct LogEntry {
    version: u64,
    /// When the change happened at the master (push latency is measured from here).
    at: Instant,
    /// Services added, changed or removed.
    changed: BTreeSet<ServiceName>,
    /// Identities revoked in this change.
    revoked: Vec<Revocation>,
}

/// Services, their endpoints and the revoked identities, at a version that only grows.
#[derive(Debug)]
pub struct ServiceRegistry {
    version: u64,
    services: BTreeMap<ServiceName, Service>,
    /// Revoked identity → refused until (ms since the Unix epoch).
    revoked: BTreeMap<String, u64>,
    log: VecDeque<LogEntry>,
    log_len: usize,
    /// The mesh-wide settings every push carries.
    mesh: MeshSettings,
}

impl ServiceRegistry {
    /// An empty registry at version `floor` (above every version an earlier master
    /// process used), keeping `log_len` changes (at least 1).
    pub fn new(floor: u64, log_len: usize) -> Self {
        Self {
            version: floor,
            services: BTreeMap::new(),
            revoked: BTreeMap::new(),
            log: VecDeque::new(),
            log_len: log_len.max(1),
            mesh: MeshSettings::default(),
        }
    }

    /// With these mesh-wide settings in every push.
    pub fn with_mesh(mut self, mesh: MeshSettings) -> Self {
        self.mesh = mesh;
        self
    }

    /// The mesh-wide settings.
    pub fn mesh(&self) -> MeshSettings {
        self.mesh
    }

    /// The version now.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every service, sorted by name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// One service.
    pub fn service(&self, name: &ServiceName) -> Option<&Service> {
        self.services.get(name)
    }

    /// The revocations in force.
    pub fn revoked(&self) -> Vec<Revocation> {
        self.revoked
            .iter()
            .map(|(id, until)| Revocation {
                id: id.clone(),
                until_ms: *until,
            })
            .collect()
    }

    /// Whether endpoint `id` of any service is in the registry now.
    pub fn has_endpoint(&self, id: &str) -> bool {
        self.services
            .values()
            .any(|s| s.endpoints.iter().any(|e| e.id == id))
    }

    /// Makes `desired` the registry's services and adds `revoked` (a revocation already in
    /// force changes nothing; those past `until_ms` are dropped, see
    /// [`Self::forget_revocations`]). A change is one new version, logged at `now`;
    /// returns it, or `None` if nothing changed.
    pub fn update(
        &mut self,
        desired: BTreeMap<ServiceName, Service>,
        revoked: impl IntoIterator<Item = Revocation>,
        now: Instant,
    ) -> Option<u64> {
        let mut changed = BTreeSet::new();
        for (name, s) in &desired {
            if self.services.get(name) != Some(s) {
                changed.insert(name.clone());
            }
        }
        for name in self.services.keys() {
            if !desired.contains_key(name) {
                changed.insert(name.clone());
            }
        }
        let mut new_revoked = Vec::new();
        for r in revoked {
            match self.revoked.get(&r.id) {
                Some(until) if *until >= r.until_ms => {}
                _ => new_revoked.push(r),
            }
        }
        if changed.is_empty() && new_revoked.is_empty() {
            return None;
        }
        self.services = desired;
        for r in &new_revoked {
            self.revoked.insert(r.id.clone(), r.until_ms);
        }
        self.version += 1;
        self.log.push_back(LogEntry {
            version: self.version,
            at: now,
            changed,
            revoked: new_revoked,
        });
        while self.log.len() > self.log_len {
            self.log.pop_front();
        }
        Some(self.version)
    }

    /// Forgets revocations that ended by `now_ms`: their certificates are refused as
    /// expired anyway, and every proxy drops them by their `until_ms` itself, so this is
    /// no new version.
    pub fn forget_revocations(&mut self, now_ms: u64) {
        self.revoked.retain(|_, until| *until > now_ms);
    }

    /// When the first change after version `v` happened, if it is in the log.
    pub fn first_change_after(&self, v: u64) -> Option<Instant> {
        self.log.iter().find(|e| e.version > v).map(|e| e.at)
    }

    /// Whether a delta from `v` can be computed: every change after it is in the log.
    pub fn can_delta_from(&self, v: u64) -> bool {
        if v > self.version {
            return false;
        }
        if v == self.version {
            return true;
        }
        self.log.front().is_some_and(|e| e.version <= v + 1)
    }

    /// Everything, as one full snapshot.
    pub fn full(&self) -> Push {
        Push {
            version: self.version,
            kind: PushKind::Full,
            services: self.services.values().cloned().collect(),
            removed: Vec::new(),
            revoked: self.revoked(),
            mesh: self.mesh,
        }
    }

    /// What a proxy that holds `have` needs: a delta of the changed services if the log
    /// covers it, a full snapshot otherwise.
    pub fn push_from(&self, have: Option<u64>) -> Push {
        let Some(from) = have.filter(|v| self.can_delta_from(*v)) else {
            return self.full();
        };
        let mut changed = BTreeSet::new();
        let mut revoked = Vec::new();
        for e in self.log.iter().filter(|e| e.version > from) {
            changed.extend(e.changed.iter().cloned());
            revoked.extend(e.revoked.iter().cloned());
        }
        let (mut services, mut removed) = (Vec::new(), Vec::new());
        for name in changed {
            match self.services.get(&name) {
                Some(s) => services.push(s.clone()),
                None => removed.push(name),
            }
        }
        Push {
            version: self.version,
            kind: PushKind::Delta { from },
            services,
            removed,
            revoked,
            mesh: self.mesh,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use actormesh::mesh::{BalancerKind, Endpoint};
    use std::time::Duration;

    pub(crate) fn endpoint(id: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            node: "spiffe://td/node/a1".into(),
            addr: "127.0.0.1:9000".parse().unwrap(),
            actor: id.into(),
            version: "v1".into(),
            labels: BTreeMap::from([("version".to_string(), "v1".to_string())]),
            weight: 1,
            zone: None,
        }
    }

    pub(crate) fn service(name: &str, endpoints: &[&str]) -> (ServiceName, Service) {
        let n: ServiceName = name.parse().unwrap();
        (
            n.clone(),
            Service {
                name: n,
                labels: BTreeMap::new(),
                balancer: BalancerKind::P2c,
                locality: true,
                endpoints: endpoints.iter().map(|e| endpoint(e)).collect(),
                traffic: Default::default(),
                hosts: Vec::new(),
            },
        )
    }

    fn names(v: &[Service]) -> Vec<String> {
        v.iter().map(|s| s.name.to_string()).collect()
    }

    #[test]
    fn a_change_is_one_version_and_no_change_is_none() {
        let t = Instant::now();
        let mut r = ServiceRegistry::new(7, 8);
        let want = BTreeMap::from([service("a", &["x"])]);
        assert_eq!(r.update(want.clone(), [], t), Some(8));
        assert_eq!(r.update(want, [], t), None, "the same services");
        assert_eq!(r.version(), 8);
        let rev = Revocation {
            id: "spiffe://td/node/b".into(),
            until_ms: 10,
        };
        let same = BTreeMap::from([service("a", &["x"])]);
        assert_eq!(r.update(same.clone(), [rev.clone()], t), Some(9));
        assert_eq!(r.update(same, [rev], t), None, "already revoked");
    }

    #[test]
    fn a_delta_carries_only_the_changed_services_and_the_removed_names() {
        let t = Instant::now();
        let mut r = ServiceRegistry::new(0, 8);
        r.update(
            BTreeMap::from([service("a", &["x"]), service("b", &["y"])]),
            [],
            t,
        );
        let v1 = r.version();
        r.update(
            BTreeMap::from([service("a", &["x", "z"]), service("c", &[])]),
            [Revocation {
                id: "n".into(),
                until_ms: 5,
            }],
            t + Duration::from_millis(3),
        );
        let p = r.push_from(Some(v1));
        assert_eq!(p.kind, PushKind::Delta { from: v1 });
        assert_eq!(p.version, v1 + 1);
        assert_eq!(names(&p.services), ["default/a", "default/c"]);
        assert_eq!(p.removed, vec!["b".parse::<ServiceName>().unwrap()]);
        assert_eq!(p.revoked.len(), 1);
        assert_eq!(r.first_change_after(v1), Some(t + Duration::from_millis(3)));
        // Up to date: an empty delta.
        let p = r.push_from(Some(r.version()));
        assert!(p.services.is_empty() && p.removed.is_empty());
        // A full snapshot has everything, nothing removed.
        let f = r.push_from(None);
        assert_eq!(f.kind, PushKind::Full);
        assert_eq!(names(&f.services), ["default/a", "default/c"]);
        assert!(f.removed.is_empty());
        assert_eq!(f.revoked.len(), 1);
    }

    #[test]
    fn a_version_the_log_does_not_cover_gets_a_full_snapshot() {
        let t = Instant::now();
        let mut r = ServiceRegistry::new(100, 2);
        for i in 0..4 {
            r.update(BTreeMap::from([service("a", &[&format!("e{i}")])]), [], t);
        }
        // Versions 101..104; the log keeps 103 and 104, so deltas from 102 on.
        assert!(r.can_delta_from(102));
        assert!(
            !r.can_delta_from(101),
            "the change to 102 is no longer logged"
        );
        assert_eq!(r.push_from(Some(101)).kind, PushKind::Full);
        assert_eq!(r.push_from(Some(102)).kind, PushKind::Delta { from: 102 });
        // A version from beyond (another master era that went further): full.
        assert_eq!(r.push_from(Some(500)).kind, PushKind::Full);
        // A version from before a restart (below the floor): full.
        let fresh = ServiceRegistry::new(100, 2);
        assert_eq!(fresh.push_from(Some(90)).kind, PushKind::Full);
        assert_eq!(
            fresh.push_from(Some(100)).kind,
            PushKind::Delta { from: 100 }
        );
    }

    #[test]
    fn revocations_past_their_end_are_forgotten_without_a_new_version() {
        let t = Instant::now();
        let mut r = ServiceRegistry::new(0, 8);
        r.update(
            BTreeMap::new(),
            [
                Revocation {
                    id: "a".into(),
                    until_ms: 10,
                },
                Revocation {
                    id: "b".into(),
                    until_ms: 30,
                },
            ],
            t,
        );
        let v = r.version();
        r.forget_revocations(20);
        assert_eq!(r.version(), v);
        assert_eq!(r.revoked().len(), 1);
        assert_eq!(r.full().revoked[0].id, "b");
    }
}
