//! The README's walkthrough, run as written: `actormesh dev` as "Two commands" starts it (in
//! the background), then every `sh` block of "Ten minutes with actormesh", in order, in a
//! fresh directory, each of which must succeed. The blocks share what a terminal would:
//! the variables they export. Only the operator API's port differs from the README's
//! default (`ACTORMESH_API`), so that the test can run beside others, and `actormesh` is
//! this build's binary (the README's `cargo build` line is not run).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

const CARGO_RUN: &str = "cargo run --release -p actormesh-cli --";

/// The `sh` blocks of the section that starts with `heading`, up to the next `## `.
fn blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?} section"));
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut out = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("an unclosed code block in README");
        out.push(body[..close].to_string());
        rest = &body[close + 3..];
    }
    out
}

/// Kills the agent the walkthrough starts in the background, if the test ends before
/// the walkthrough kills it.
struct Agent2(PathBuf);

impl Drop for Agent2 {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("agent-2.pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `uniq -c` lines (`     83 "version":"v1"`) as counts by what was counted.
fn tally(printed: &str) -> BTreeMap<String, u32> {
    printed
        .lines()
        .filter_map(|l| {
            let (n, what) = l.trim().split_once(' ')?;
            Some((what.to_string(), n.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let dev_block = blocks(&readme, "## Two commands")
        .into_iter()
        .find(|b| b.contains(" dev"))
        .expect("\"Two commands\" starts `actormesh dev`");
    assert_eq!(dev_block.trim(), format!("{CARGO_RUN} dev"));
    let steps = blocks(&readme, "## Ten minutes with actormesh");
    for what in [" call ", " apply ", "kill -9", " top"] {
        assert!(
            steps.iter().any(|b| b.contains(what)),
            "the walkthrough has {what:?}: {steps:#?}"
        );
    }

    let dir = temp_dir("walkthrough");
    let _agent2 = Agent2(dir.clone());
    let api = free_tcp();
    let api_arg = api.to_string();
    let mut dev = Proc::spawn_in(
        &dir,
        &["dev", "--api", &api_arg, "--gateway-http", "127.0.0.1:0"],
    );
    dev.line("dev cluster ready").await;

    let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
    let mut exports = String::new();
    let mut outputs: Vec<(String, String)> = Vec::new();
    for step in &steps {
        let script: Vec<&str> = step
            .lines()
            .filter(|l| !l.starts_with("cargo build "))
            .collect();
        let script = script.join("\n");
        assert!(
            !script.contains("cargo "),
            "a README step runs something other than the CLI: {step}"
        );
        let full = format!("{exports}export PATH=\"{bin_dir}:$PATH\"\n{script}\n");
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new("timeout")
                .args(["120", "sh", "-ec", &full])
                .current_dir(&dir)
                .env("ACTORMESH_API", format!("http://{api}"))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        });
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README step failed ({}):\n{step}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("step ok:\n{script}\n{stdout}");
        for l in script.lines().filter(|l| l.starts_with("export ")) {
            exports.push_str(l);
            exports.push('\n');
        }
        outputs.push((step.clone(), stdout));
    }
    let printed = |marker: &str| -> &str {
        &outputs
            .iter()
            .find(|(s, _)| s.contains(marker))
            .unwrap_or_else(|| panic!("no step has {marker:?}"))
            .1
    };

    // The call by name printed the reply as JSON; the second node joined.
    assert!(
        printed(" call default/echo ").contains("\"hello\""),
        "{}",
        printed(" call default/echo ")
    );
    let nodes = printed("--print-join-command");
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("agent-2 ") && l.contains("Active")),
        "{nodes}"
    );
    // One hello instance on each node; the one on agent-2 is the one to replace.
    let endpoints = printed("apply -f hello.yaml");
    let on_agent2 = endpoints
        .lines()
        .find(|l| l.contains("node/agent-2"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no hello endpoint on agent-2:\n{endpoints}"))
        .to_string();
    assert!(
        endpoints.lines().any(|l| l.contains("node/dev-agent")),
        "{endpoints}"
    );

    // The canary: both versions of 100 calls (v2's fifth, 20 ± 4.0: none at all is one
    // chance in 5 billion); then v2 only.
    let canary = tally(printed("apply -f canary.yaml"));
    let (v1, v2) = (
        canary.get("\"version\":\"v1\"").copied().unwrap_or(0),
        canary.get("\"version\":\"v2\"").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v2, 100, "{canary:?}");
    assert!(v1 > 0 && v2 > 0, "{canary:?}");
    let shifted = tally(printed("apply -f all-v2.yaml"));
    assert_eq!(
        shifted,
        BTreeMap::from([("\"version\":\"v2\"".to_string(), 20)])
    );

    // After agent-2 died every call was answered, none by its instance.
    let after = tally(printed("kill -9"));
    assert_eq!(after.values().sum::<u32>(), 20, "{after:?}");
    assert!(
        after.keys().all(|k| !k.contains(&on_agent2)),
        "{on_agent2} answered after its node died: {after:?}"
    );

    // top saw the calls.
    let top = printed(" top");
    assert!(
        top.lines()
            .any(|l| l.starts_with("default/hello") && l.contains("demo.Whoami/v1")),
        "{top}"
    );
    dev.kill().await;
}
