//! What operators see of the deployments: summaries and descriptions.

use super::*;

impl DeploymentBook {
    /// One deployment in full, for `describe deployment`.
    pub fn describe(&self, key: &str) -> Option<DeploymentDescription> {
        let d = self.deployments.get(key)?;
        let summary = self.summary(key, d);
        let mut tasks: Vec<TaskEntry> = self
            .tasks
            .values()
            .filter(|t| t.deployment == key)
            .cloned()
            .collect();
        tasks.sort_by_key(|t| std::cmp::Reverse(t.seq));
        Some(DeploymentDescription {
            summary,
            manifest: d.manifest.clone(),
            need: d.need.clone(),
            want: d.want.clone(),
            failures: self.backoff.get(key).map_or(0, |b| b.failures),
            tasks,
        })
    }

    /// Every deployment's standing.
    pub fn summaries(&self) -> Vec<DeploymentSummary> {
        self.deployments
            .iter()
            .map(|(k, d)| self.summary(k, d))
            .collect()
    }

    fn summary(&self, k: &str, d: &Deployment) -> DeploymentSummary {
        let spec = &d.manifest.spec;
        let checked = d.health.is_some();
        let count = |f: &dyn Fn(&TaskEntry) -> bool| {
            self.tasks
                .values()
                .filter(|t| t.deployment == k && f(t))
                .count() as u32
        };
        DeploymentSummary {
            namespace: d.manifest.namespace.clone(),
            name: d.manifest.name.clone(),
            version: spec.version.clone(),
            replicas: spec.replicas,
            running: count(&|t| t.available(checked) && t.version == spec.version),
            pending: count(&|t| t.live() && !t.available(checked) && t.version == spec.version),
            old: count(&|t| t.live() && t.version != spec.version),
            done: count(&|t| {
                t.version == spec.version && fills_slot(&spec.restart.policy, t.state)
            }),
            unplaced: self.unplaced.get(k).cloned(),
            stalled: self.stalled.contains(k),
        }
    }
}
