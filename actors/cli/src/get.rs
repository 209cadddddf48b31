//! `get nodes|deployments|tasks|frameworks`: a list from the API, as a table or JSON.

use serde::de::DeserializeOwned;

use actormesh_master::deployments::{DeploymentSummary, TaskEntry};
use actormesh_master::membership::AgentRecord;
use actormesh_master::scheduler::FrameworkSummary;

use crate::args::{ApiArgs, GetWhat};
use crate::output::{self, JsonLayout};
use crate::tables;

pub(crate) fn run(what: GetWhat) -> anyhow::Result<()> {
    match what {
        GetWhat::Nodes { api } => list(&api, "/v1/nodes", |n: Vec<AgentRecord>| tables::nodes(&n)),
        GetWhat::Deployments { api } => {
            list(&api, "/v1/deployments", |d: Vec<DeploymentSummary>| {
                tables::deployments(&d)
            })
        }
        GetWhat::Tasks { api } => list(&api, "/v1/tasks", |t: Vec<TaskEntry>| tables::tasks(&t)),
        GetWhat::Frameworks { api } => list(&api, "/v1/frameworks", |f: Vec<FrameworkSummary>| {
            tables::frameworks(&f)
        }),
    }
}

/// Prints the list at `path` as `table` lays out its rows, or as JSON.
fn list<T: DeserializeOwned>(
    api: &ApiArgs,
    path: &str,
    table: impl FnOnce(T) -> String,
) -> anyhow::Result<()> {
    let answer = api.client()?.call("GET", path, None)?;
    output::print(api.output, JsonLayout::Pretty, answer, table)
}
