//! `drain node`: no new work is placed on the node; what runs there stays.

use crate::args::DrainWhat;
use crate::output::{self, JsonLayout};

pub(crate) fn run(what: DrainWhat) -> anyhow::Result<()> {
    let DrainWhat::Node { id, api } = what;
    let answer = api
        .client()?
        .call("POST", &format!("/v1/nodes/{id}/drain"), None)?;
    output::print(
        api.output,
        JsonLayout::Line,
        answer,
        |_: serde_json::Value| format!("node {id} is draining: no new work will be placed on it\n"),
    )
}
