//! `actormesh call` against `actormesh dev`: replies print as JSON, and every kind of bad
//! input or failed call has its message and exit code.

mod common;

use common::*;

fn call(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let identity = dir.join("state/client");
    let mut all = vec!["call", "--identity", identity.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = std::process::Command::new(BIN)
        .args(&all)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_the_reply_and_maps_every_failure_to_its_exit_code() {
    let dir = temp_dir("cli-call");
    let api = free_tcp().to_string();
    let state = dir.join("state");
    let mut dev = Proc::spawn(&[
        "dev",
        "--data-dir",
        state.to_str().unwrap(),
        "--api",
        &api,
        "--gateway-http",
        "127.0.0.1:0",
    ]);
    dev.line("dev cluster ready").await;
    let (code, out, err) = tokio::task::block_in_place(|| {
        call(
            &dir,
            &["default/echo", "demo.Greet/v1", r#"{"name": "you"}"#],
        )
    });
    assert_eq!((code, out.trim()), (0, "\"hello, you\""), "{err}");
    // A bare name resolves in the default namespace; metadata and a timeout are taken.
    let (code, out, err) = tokio::task::block_in_place(|| {
        call(
            &dir,
            &[
                "echo",
                "demo.Echo/v1",
                r#""hi""#,
                "--metadata",
                "tenant=acme",
                "--timeout",
                "3s",
            ],
        )
    });
    assert_eq!((code, out.trim()), (0, "\"hi\""), "{err}");
    let cases: [(&[&str], i32, &str); 6] = [
        // JSON that does not fit the message names the field, and the callee got it.
        (
            &["default/echo", "demo.Greet/v1", r#"{"nam": "you"}"#],
            7,
            "missing field `name`",
        ),
        (
            &["default/echo", "demo.Greet/v1", r#"{"name": "#],
            3,
            "not JSON",
        ),
        (
            &["default/nope", "demo.Echo/v1", r#""x""#],
            5,
            "no ready endpoint",
        ),
        (
            &["default/echo", "demo.Nope/v1", r#""x""#],
            6,
            "does not accept",
        ),
        (
            &["Default/echo", "demo.Echo/v1", r#""x""#],
            3,
            "invalid service name",
        ),
        (
            &[
                "default/echo",
                "demo.Echo/v1",
                r#""x""#,
                "--metadata",
                "novalue",
            ],
            3,
            "expected key=value",
        ),
    ];
    for (args, want, says) in cases {
        let (code, out, err) = tokio::task::block_in_place(|| call(&dir, args));
        assert_eq!(code, want, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
    }
    let big = format!("k={}", "x".repeat(1100));
    let (code, _, err) = tokio::task::block_in_place(|| {
        call(
            &dir,
            &["default/echo", "demo.Echo/v1", r#""x""#, "--metadata", &big],
        )
    });
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("1024"),
        "metadata over the limit names it: {err}"
    );
    // Without an identity the CLI says where it looked and how to get one.
    let out = std::process::Command::new(BIN)
        .args([
            "call",
            "--identity",
            "/nonexistent",
            "default/echo",
            "demo.Echo/v1",
            "\"x\"",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cert issue --client"));
    dev.kill().await;
}
