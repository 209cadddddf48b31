//! The README's main job: `actormesh dev`, then a deployment of its demo `echo` type.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_cluster_runs_a_deployment_of_its_demo_type() {
    let dir = temp_dir("dev");
    let api = free_tcp().to_string();
    let mut dev = Proc::spawn(&[
        "dev",
        "--data-dir",
        dir.join("state").to_str().unwrap(),
        "--api",
        &api,
    ]);
    // "try: actormesh get nodes --api http://… --api-token-file …"
    let hint = dev.line("try: actormesh get nodes ").await;
    let args: Vec<String> = hint.split_whitespace().map(str::to_string).collect();
    assert_eq!(args.len(), 4, "{hint}");
    let manifest = dir.join("echo.yaml");
    std::fs::write(
        &manifest,
        "kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:1\" }\n",
    )
    .unwrap();
    let cli = |first: &[&str]| {
        let mut all: Vec<String> = first.iter().map(|s| s.to_string()).collect();
        all.extend(args.iter().cloned());
        std::process::Command::new(BIN).args(&all).output().unwrap()
    };
    // apply waits until the replica runs.
    let out = tokio::task::block_in_place(|| {
        cli(&[
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "--timeout",
            "30s",
        ])
    });
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("default/echo: 1/1 running"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::task::block_in_place(|| cli(&["get", "tasks"]));
    let tasks = String::from_utf8_lossy(&out.stdout);
    assert!(
        tasks.contains("default/echo") && tasks.contains("dev-agent") && tasks.contains("Running"),
        "{tasks}"
    );
    dev.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
