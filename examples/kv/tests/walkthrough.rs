//! The walkthrough of `examples/kv/README.md`, run as written: each `sh` block in order, in
//! a fresh directory. `cargo run --release -p actormesh-cli --` and `cargo run --release -p
//! kv --` become the binaries this `cargo test` built (the `actormesh` binary sits beside
//! `kv` in the target directory: `cargo test --workspace` builds both). The blocks that start
//! `dev` and `kv agent` run in the background until their ready line; every other block must
//! succeed and print what its `# prints:` comments say. Only the ports differ from the
//! README: the bootstrap port and the API are ones the system picked.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const KV: &str = env!("CARGO_BIN_EXE_kv");
const CLI_RUN: &str = "cargo run --release -p actormesh-cli --";
const KV_RUN: &str = "cargo run --release -p kv --";
const README_BOOTSTRAP: &str = "127.0.0.1:7001";
/// How long a background step may take to print its ready line.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// The `sh` blocks of `readme`, in order.
fn blocks(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = readme;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body
            .find("```")
            .expect("an unclosed code block in the README");
        out.push(body[..close].to_string());
        rest = &body[close + 3..];
    }
    out
}

/// What a block's `# prints: X` comments say it prints, in order.
fn expected_prints(block: &str) -> Vec<String> {
    block
        .lines()
        .filter_map(|l| {
            l.split_once("# prints: ")
                .map(|(_, x)| x.trim().to_string())
        })
        .collect()
}

/// A background step: its process and the lines it prints.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Background {
    fn start(dir: &Path, script: &str, api: &str) -> Self {
        // `exec`, so that the process killed at the end is the step's own, not a shell.
        let mut child = Command::new("sh")
            .args(["-ec", &format!("exec {script}")])
            .current_dir(dir)
            .env("ACTORMESH_API", format!("http://{api}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a background step");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that starts with `prefix`.
    fn ready(&mut self, prefix: &str, step: &str) {
        let deadline = std::time::Instant::now() + READY_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with(prefix);
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(e) => panic!(
                    "no {prefix:?} line from the step ({e:?}):\n{step}\nit printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(udp: bool) -> String {
    let addr = if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    addr.to_string()
}

fn fresh_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kv-walkthrough-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_kv_walkthrough_works_as_written() {
    let cli = Path::new(KV).with_file_name("actormesh");
    assert!(
        cli.exists(),
        "{} is missing: build it first (`cargo build -p actormesh-cli`; `cargo test --workspace` does)",
        cli.display()
    );
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("examples/kv/README.md");
    let steps = blocks(&readme);
    assert!(
        steps.iter().any(|b| b.contains(" dev "))
            && steps.iter().any(|b| b.contains(" agent "))
            && steps.iter().any(|b| b.contains(" get greeting")),
        "the walkthrough starts dev and the kv agent, and calls kv: {steps:#?}"
    );
    let dir = fresh_dir();
    let bootstrap = free_port(true);
    let api = free_port(false);
    let mut background = Vec::new();
    let mut checked = 0;
    let mut outputs = Vec::new();
    for step in &steps {
        let script = step
            .replace(CLI_RUN, &cli.display().to_string())
            .replace(KV_RUN, KV)
            .replace(README_BOOTSTRAP, &bootstrap);
        assert!(
            !script.contains("cargo "),
            "a README step runs something other than the two binaries: {step}"
        );
        let first = script.trim_start();
        if first.starts_with(&format!("{} dev", cli.display())) {
            let mut dev = Background::start(&dir, &format!("{} --api {api}", script.trim()), &api);
            dev.ready("dev cluster ready", step);
            background.push(dev);
            continue;
        }
        if first.starts_with(&format!("{KV} agent")) {
            let mut agent = Background::start(&dir, script.trim(), &api);
            agent.ready("kv agent ", step);
            background.push(agent);
            continue;
        }
        assert!(
            !background.is_empty(),
            "a step before `dev` started: {step}"
        );
        let out = Command::new("sh")
            .args(["-ec", &script])
            .current_dir(&dir)
            .env("ACTORMESH_API", format!("http://{api}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README step failed ({}):\n{step}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // Each `# prints:` names a line the step prints, in order.
        let mut printed = stdout.lines().map(str::trim);
        for want in expected_prints(step) {
            assert!(
                printed.any(|l| l == want),
                "the step did not print {want:?} (in order):\n{step}\nstdout:\n{stdout}"
            );
            checked += 1;
        }
        eprintln!("step ok:\n{script}\n{stdout}");
        outputs.push((step.clone(), stdout));
    }
    assert!(checked >= 4, "the walkthrough checks its calls' output");
    // `get tasks` shows where each kv instance serves: its node's address and its actor
    // name, which is its task id.
    let (_, tasks) = outputs
        .iter()
        .find(|(s, _)| s.contains(" get tasks"))
        .expect("the walkthrough lists the tasks");
    let kv: Vec<&str> = tasks
        .lines()
        .filter(|l| l.contains(" default/kv "))
        .collect();
    assert_eq!(kv.len(), 2, "two kv instances:\n{tasks}");
    for line in kv {
        let id = line.split_whitespace().next().unwrap();
        assert!(
            line.contains("127.0.0.1:") && line.contains(&format!("/{id} ")),
            "the task's endpoint is address/{id}:\n{tasks}"
        );
    }
    drop(background);
    let _ = std::fs::remove_dir_all(&dir);
}
