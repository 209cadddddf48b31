//! bookinfo in a real browser: `bookinfo up` starts it all, and Debian's headless Chromium
//! loads the product page in each routing state. The page's DOM, after its script has run,
//! says which reviews version served it, whether it shows stars, and the colour the browser
//! computed for them. Screenshots of the black and red stars are kept under
//! `target/tmp/bookinfo-browser/`.
//!
//! The states are applied as a user would: by running the `actormesh apply` lines that
//! `bookinfo up` prints. Each state is first awaited over plain HTTP (the gateway and the
//! productpage's node take the new policy within a push or two) until ten loads in a row
//! show it, and is then checked in the browser.
//!
//! Needs `chromium` (the test command installs it) and the `actormesh` binary beside
//! `bookinfo` in `target/`, which `cargo test --workspace` builds; with `-p bookinfo` alone,
//! build it first (`cargo build -p actormesh-cli`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `bookinfo up`, in its own process group, killed with all its children when dropped.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Up {
    fn start(dir: &Path) -> Up {
        let bookinfo = PathBuf::from(env!("CARGO_BIN_EXE_bookinfo"));
        let actormesh = bookinfo.with_file_name("actormesh");
        assert!(
            actormesh.is_file(),
            "{} is missing: build it first (cargo build -p actormesh-cli; cargo test --workspace does)",
            actormesh.display()
        );
        let log = dir.join("up.stderr.log");
        let stderr = std::fs::File::create(&log).expect("create the log");
        let mut child = Command::new(&bookinfo)
            .arg("up")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--api", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("start bookinfo up");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Up { child, lines, log }
    }

    /// Lines up to and including the one `done` takes; panics after `within`.
    fn until(&mut self, within: Duration, what: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let last = done(&line);
                    seen.push(line);
                    if last {
                        return seen;
                    }
                }
                Err(e) => panic!(
                    "bookinfo up did not print {what} ({e:?}); it printed:\n{}\nits log: {}",
                    seen.join("\n"),
                    self.log.display()
                ),
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// What the product page shows about reviews.
#[derive(Debug, Default)]
struct Page {
    /// `data-version` of the reviews section: which reviews version served the page.
    version: Option<String>,
    /// The `data-color` of each stars element.
    stars: Vec<String>,
    /// The colour the browser computed for each stars element (set by the page's script,
    /// so only in a browser's DOM).
    rendered: Vec<String>,
    /// The ratings error reviews reports (`timeout`, `unavailable`, `denied`).
    ratings_error: Option<String>,
    /// Whether the page says reviews are unavailable.
    reviews_error: bool,
}

/// Each value of `attr="…"` in `html`, in order.
fn attrs(html: &str, attr: &str) -> Vec<String> {
    let key = format!("{attr}=\"");
    html.match_indices(&key)
        .filter_map(|(at, _)| {
            let rest = &html[at + key.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect()
}

impl Page {
    fn parse(html: &str) -> Page {
        let ratings_error = html
            .find("ratings-error\"")
            .and_then(|at| attrs(&html[at..], "data-error").into_iter().next());
        Page {
            version: attrs(html, "data-version").into_iter().next(),
            stars: attrs(html, "data-color"),
            rendered: attrs(html, "data-rendered"),
            ratings_error,
            reviews_error: html.contains("id=\"reviews-error\""),
        }
    }
}

/// What a state shows, for one user.
#[derive(Debug, Clone, Copy)]
enum Shows {
    /// Served by `version`, and no stars (v1 does not ask ratings).
    NoStars(&'static str),
    /// Served by `version`, two reviewers' stars in `color`, which a browser computes as
    /// `rgb`.
    Stars(&'static str, &'static str, &'static str),
    /// Served by `version`, no stars, and this ratings error instead.
    RatingsError(&'static str, &'static str),
}

impl Shows {
    /// Why `page` does not show this; `in_browser`: the computed colours must be there too.
    fn check(self, page: &Page, in_browser: bool) -> Result<(), String> {
        let version = match self {
            Shows::NoStars(v) | Shows::Stars(v, ..) | Shows::RatingsError(v, _) => v,
        };
        if page.reviews_error {
            return Err("the page says reviews are unavailable".into());
        }
        if page.version.as_deref() != Some(version) {
            return Err(format!("served by {:?}, not {version}", page.version));
        }
        match self {
            Shows::NoStars(_) | Shows::RatingsError(..) if !page.stars.is_empty() => {
                Err(format!("stars {:?} where there should be none", page.stars))
            }
            Shows::NoStars(_) if page.ratings_error.is_some() => {
                Err(format!("a ratings error {:?}", page.ratings_error))
            }
            Shows::RatingsError(_, e) if page.ratings_error.as_deref() != Some(e) => {
                Err(format!("ratings error {:?}, not {e}", page.ratings_error))
            }
            Shows::Stars(_, color, rgb) => {
                if page.ratings_error.is_some() {
                    return Err(format!("a ratings error {:?}", page.ratings_error));
                }
                if page.stars.len() != 2 || page.stars.iter().any(|c| c != color) {
                    return Err(format!("stars {:?}, not two {color}", page.stars));
                }
                if in_browser
                    && (page.rendered.len() != 2 || page.rendered.iter().any(|c| c != rgb))
                {
                    return Err(format!(
                        "the browser rendered the stars in {:?}, not {rgb}",
                        page.rendered
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// `GET path` at `addr` over HTTP/1.1: the status and the whole body.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let go = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    };
    let text = go().map_err(|e| format!("GET {path}: {e}"))?;
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP response: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// The product page over plain HTTP, as `path` shows it.
fn load(gateway: SocketAddr, path: &str) -> Result<Page, String> {
    match get(gateway, path)? {
        (200, body) => Ok(Page::parse(&body)),
        (status, body) => Err(format!("GET {path}: {status} {body}")),
    }
}

/// Loads `path` until it shows `shows` in `IN_A_ROW` loads in a row (a new policy takes a
/// push or two to arrive). In a row: before the first route, reviews is balanced over
/// v1, v2 and v3, and one load in three shows v1 by chance; ten in a row by chance is one
/// in 59049.
fn await_state(gateway: SocketAddr, path: &str, shows: Shows) {
    const IN_A_ROW: u32 = 10;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let mut in_a_row = 0;
    for _ in 0..600 {
        match load(gateway, path).and_then(|p| shows.check(&p, false)) {
            Ok(()) => {
                in_a_row += 1;
                if in_a_row == IN_A_ROW {
                    return;
                }
                continue;
            }
            Err(e) => {
                in_a_row = 0;
                last = e;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{path} did not come to show {shows:?} {IN_A_ROW} times in a row; the last other load: {last}");
}

/// Debian's headless Chromium with a fresh profile, bounded in time: its stdout.
fn chromium(dir: &Path, args: &[String]) -> String {
    let profile = dir.join(format!("chromium-profile-{}", args.len()));
    let _ = std::fs::remove_dir_all(&profile);
    let out = Command::new("timeout")
        .args(["-s", "KILL", "90", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium (the test command installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's DOM after its script ran, as Chromium renders `path`.
fn in_browser(dir: &Path, gateway: SocketAddr, path: &str) -> Page {
    let dom = chromium(
        dir,
        &["--dump-dom".into(), format!("http://{gateway}{path}")],
    );
    assert!(
        dom.contains("Book Reviews"),
        "chromium did not get the product page for {path}: {dom}"
    );
    Page::parse(&dom)
}

/// Checks `path` in the browser; with `shot`, also saves a screenshot by that name.
fn browser_shows(dir: &Path, gateway: SocketAddr, path: &str, shows: Shows, shot: Option<&str>) {
    let page = in_browser(dir, gateway, path);
    if let Err(e) = shows.check(&page, true) {
        panic!("in the browser, {path} does not show {shows:?}: {e}; {page:?}");
    }
    if let Some(name) = shot {
        let file = dir.join(format!("{name}.png"));
        chromium(
            dir,
            &[
                format!("--screenshot={}", file.display()),
                "--window-size=1200,800".into(),
                format!("http://{gateway}{path}"),
            ],
        );
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
            "{} is not a screenshot",
            file.display()
        );
        eprintln!("screenshot: {}", file.display());
    }
}

/// Runs the `actormesh apply` line `up` printed for `manifest`, as a user would copy it.
fn apply(printed: &[String], manifest: &str) {
    let line = printed
        .iter()
        .find(|l| l.contains(" apply ") && l.ends_with(&format!("/{manifest}")))
        .unwrap_or_else(|| panic!("bookinfo up printed no apply line for {manifest}"));
    let (_, cmd) = line.split_once(": ").expect("label: command");
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let out = Command::new(words[0])
        .args(&words[1..])
        .output()
        .expect("run actormesh apply");
    assert!(
        out.status.success(),
        "{cmd} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bookinfo_in_a_browser_in_each_routing_state() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bookinfo-browser");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test dir");
    let mut up = Up::start(&dir);
    let printed = up.until(Duration::from_secs(180), "its ready lines", |l| {
        l.starts_with("Ctrl-C stops it all")
    });
    let gateway: SocketAddr = printed
        .iter()
        .find_map(|l| l.strip_prefix("bookinfo ready: http://"))
        .and_then(|rest| rest.strip_suffix("/productpage"))
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no gateway address in {printed:#?}"));

    // Authorization: the gateway may call productpage and details, but only productpage
    // may call reviews.
    let (status, _) = get(gateway, "/api/v1/products/0").expect("details");
    assert_eq!(status, 200, "details through the gateway");
    let (status, body) = get(gateway, "/api/v1/products/0/reviews").expect("reviews");
    assert_eq!(status, 403, "reviews from the gateway: {body}");
    assert!(body.contains("default/reviews-callers"), "{body}");

    let anyone = "/productpage";
    let jason = "/productpage?u=jason";
    let v1 = Shows::NoStars("v1");
    let black = Shows::Stars("v2", "black", "rgb(0, 0, 0)");
    let red = Shows::Stars("v3", "red", "rgb(255, 0, 0)");

    apply(&printed, "reviews-v1.yaml");
    await_state(gateway, anyone, v1);
    await_state(gateway, jason, v1);
    browser_shows(&dir, gateway, jason, v1, Some("reviews-v1"));

    apply(&printed, "reviews-jason-v2.yaml");
    await_state(gateway, jason, black);
    await_state(gateway, anyone, v1);
    browser_shows(&dir, gateway, jason, black, Some("jason-v2-black-stars"));
    browser_shows(&dir, gateway, anyone, v1, None);

    // jason's ratings wait 7 s; reviews gives ratings 1 s and says so.
    let timeout = Shows::RatingsError("v2", "timeout");
    apply(&printed, "ratings-delay.yaml");
    await_state(gateway, jason, timeout);
    browser_shows(&dir, gateway, jason, timeout, None);

    let unavailable = Shows::RatingsError("v2", "unavailable");
    apply(&printed, "ratings-abort.yaml");
    await_state(gateway, jason, unavailable);
    browser_shows(&dir, gateway, jason, unavailable, Some("ratings-abort"));
    await_state(gateway, anyone, v1);

    apply(&printed, "ratings-no-faults.yaml");
    await_state(gateway, jason, black);

    apply(&printed, "reviews-v3.yaml");
    await_state(gateway, anyone, red);
    await_state(gateway, jason, red);
    browser_shows(&dir, gateway, anyone, red, Some("v3-red-stars"));

    // The canary: 90 % v1, 10 % v3. From all-v3, the first v1 page says it is in force.
    apply(&printed, "reviews-canary.yaml");
    await_state(gateway, anyone, v1);
    let loads = 400;
    let mut v3 = 0;
    for n in 0..loads {
        let page = load(gateway, anyone).unwrap_or_else(|e| panic!("canary load {n}: {e}"));
        match (v1.check(&page, false), red.check(&page, false)) {
            (Ok(()), _) => {}
            (_, Ok(())) => v3 += 1,
            (Err(a), Err(b)) => panic!("canary load {n} is neither v1 ({a}) nor v3 ({b})"),
        }
    }
    // 10 % of 400 is 40, with a standard deviation of 6: 16..=64 is four of them.
    assert!(
        (16..=64).contains(&v3),
        "{v3} of {loads} canary loads went to v3, not about 40"
    );
    // In the browser, whichever version serves a load shows its stars right.
    for _ in 0..3 {
        let page = in_browser(&dir, gateway, anyone);
        if let (Err(a), Err(b)) = (v1.check(&page, true), red.check(&page, true)) {
            panic!("in the browser, a canary load is neither v1 ({a}) nor v3 ({b}): {page:?}");
        }
    }
    eprintln!("canary: {v3} of {loads} loads to v3");
}
