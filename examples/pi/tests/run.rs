//! `pi run`, as a user runs it: a dev cluster, two pi agents and the framework, whose
//! first process leaves after three counts and whose second fails over with its id. The
//! π it prints must be exactly what the same parts give counted here: no part lost, none
//! counted twice, across the failover.
//!
//! Needs the `actormesh` binary beside `pi` in `target/`, which `cargo test --workspace`
//! builds; with `-p pi` alone, build it first (`cargo build -p actormesh-cli`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PARTS: u32 = 8;
const POINTS: u64 = 200_000;

/// Kills `pi run`'s process group if the test ends early.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn pi_run_counts_every_part_once_across_a_framework_failover() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pi"));
    let actormesh = bin.with_file_name("actormesh");
    assert!(
        actormesh.is_file(),
        "{} is missing: build it first (cargo build -p actormesh-cli; cargo test --workspace does)",
        actormesh.display()
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pi-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("run.stderr.log");
    let mut child = Command::new(&bin)
        .arg("run")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--api", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args([
            "--parts",
            &PARTS.to_string(),
            "--points",
            &POINTS.to_string(),
        ])
        .args(["--seed", "1", "--fail-over-after", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .expect("start pi run");
    let _group = Group(child.id());
    let out = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Every line until stdout closes (pi run ended), within four minutes.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "pi run did not end within 240 s; it printed:\n{}\nits log: {}",
                seen.join("\n"),
                log.display()
            ),
        }
    }
    let status = child.wait().unwrap();
    let all = seen.join("\n");
    assert!(status.success(), "pi run failed ({status}):\n{all}");
    let fw: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("framework | "))
        .collect();
    let has = |p: &str| fw.iter().any(|l| l.starts_with(p));

    // Registered, then (the second process) re-registered with the same id.
    let id = fw
        .iter()
        .find_map(|l| l.strip_prefix("registered as framework "))
        .unwrap_or_else(|| panic!("no registration:\n{all}"));
    assert!(
        fw.contains(
            &format!("re-registered as framework {id}: a failover, its tasks kept").as_str()
        ),
        "no failover with the same id {id}:\n{all}"
    );
    assert!(has("event Registered: framework"), "{all}");
    assert!(has("reconciling "), "the second process reconciles:\n{all}");
    assert!(
        all.contains("pi: the framework process is gone; starting another"),
        "{all}"
    );
    // Offers answered with both kinds of task, status updates handled.
    assert!(
        fw.iter()
            .any(|l| l.starts_with("accept offer ") && l.contains("launch cmd-")),
        "{all}"
    );
    assert!(
        fw.iter()
            .any(|l| l.starts_with("accept offer ") && l.contains("launch actor-")),
        "{all}"
    );
    assert!(has("event StatusUpdate: cmd-"), "{all}");
    assert!(has("event StatusUpdate: actor-"), "{all}");

    // Each part counted exactly once (by task id `<kind>-<part>-<attempt>`).
    let mut counted: BTreeMap<u32, u32> = BTreeMap::new();
    for l in &fw {
        if let Some(rest) = l.strip_prefix("counted task ") {
            let task = rest.split(':').next().unwrap();
            let part: u32 = task.split('-').nth(1).unwrap().parse().unwrap();
            *counted.entry(part).or_default() += 1;
        }
    }
    assert_eq!(
        counted,
        (0..PARTS).map(|p| (p, 1)).collect::<BTreeMap<_, _>>(),
        "every part counted once:\n{all}"
    );
    let pi: f64 = fw
        .iter()
        .find_map(|l| l.strip_prefix("pi ≈ "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no estimate:\n{all}"));
    assert_eq!(pi, pi::expected(PARTS, POINTS, 1), "{all}");
    assert!(has(&format!("framework {id} torn down")), "{all}");
    assert!(all.contains("pi: done"), "{all}");
    // The second process removed the id it no longer needs; the job stays.
    let fw_dir = dir.join("data").join("framework");
    assert!(!fw_dir.join("framework.json").exists());
    assert!(fw_dir.join("job.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
