//! `logs`: the end of a command task's captured stdout or stderr.

use actormesh::protocol::TaskLog;

use crate::args::LogsArgs;
use crate::output::{self, JsonLayout};

pub(crate) fn run(args: LogsArgs) -> anyhow::Result<()> {
    let LogsArgs {
        task,
        stderr,
        bytes,
        api,
    } = args;
    let stream = if stderr { "stderr" } else { "stdout" };
    let answer = api.client()?.call(
        "GET",
        &format!("/v1/tasks/{task}/logs?stream={stream}&bytes={bytes}"),
        None,
    )?;
    output::print(api.output, JsonLayout::Pretty, answer, |log: TaskLog| {
        // On stderr, so that stdout is the log as the task wrote it.
        if log.skipped_bytes > 0 {
            eprintln!(
                "[{} earlier bytes not shown; --bytes shows more]",
                log.skipped_bytes
            );
        }
        log.text
    })
}
