//! The README's walkthrough, run as written: every `sh` block of its "Two commands" section
//! but the test and benchmark commands, in order, in a fresh directory. The block that
//! starts `actormesh dev` runs in the background; every other block must succeed. Only the
//! operator API's port differs from the README's default (`ACTORMESH_API`), so the test can
//! run beside others.

mod common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let steps: Vec<String> = blocks(&readme, "## Two commands")
        .into_iter()
        .filter(|b| !b.contains("scripts/test") && !b.contains("meshbench"))
        .collect();
    assert!(
        steps.iter().any(|b| b.contains(" call ")),
        "the walkthrough calls a service by name: {steps:#?}"
    );
    let dir = temp_dir("walkthrough");
    let api = free_tcp();
    let mut dev = None;
    let mut outputs = Vec::new();
    for step in &steps {
        let script = step.replace(CARGO_RUN, BIN);
        assert!(
            !script.contains("cargo "),
            "a README step runs something other than the CLI: {step}"
        );
        if script.trim_start().starts_with(&format!("{BIN} dev")) {
            let args: Vec<String> = script
                .split_whitespace()
                .skip(1)
                .map(String::from)
                .collect();
            let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
            let api = api.to_string();
            all.extend(["--api", api.as_str(), "--gateway-http", "127.0.0.1:0"]);
            let mut p = Proc::spawn_in(&dir, &all);
            p.line("dev cluster ready").await;
            dev = Some(p);
            continue;
        }
        assert!(dev.is_some(), "a step before `dev` started: {step}");
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new("sh")
                .args(["-ec", &script])
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
        outputs.push((step.clone(), stdout));
    }
    // The call by name printed the reply as JSON.
    let (_, printed) = outputs
        .iter()
        .find(|(s, _)| s.contains(" call default/echo "))
        .expect("the walkthrough calls default/echo");
    assert!(printed.contains("\"hello\""), "{printed}");
    let mut dev = dev.expect("the walkthrough starts `actormesh dev`");
    dev.kill().await;
}
