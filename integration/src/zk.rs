//! A real ZooKeeper ensemble on loopback for tests: Debian's `zookeeper` package (its jar
//! and Java), one config and data dir per server, ports chosen at run time. Each server
//! runs under a small shell watchdog that stops it when the test process ends, so no
//! server outlives its test binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package puts ZooKeeper.
const JAR: &str = "/usr/share/java/zookeeper.jar";
const CONF: &str = "/etc/zookeeper/conf";

/// One server of an ensemble.
#[derive(Debug)]
pub struct Server {
    /// Its id (`myid`), from 1.
    pub id: usize,
    /// The port clients connect to.
    pub client_port: u16,
    dir: PathBuf,
    watchdog: Option<Child>,
}

/// A running ensemble.
#[derive(Debug)]
pub struct Ensemble {
    /// The servers, by id - 1.
    pub servers: Vec<Server>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// What `srvr` says of a server's role: `leader`, `follower`, `standalone`; `None` if it
/// does not serve.
pub fn mode(port: u16) -> Option<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"srvr").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(|m| m.trim().to_string())
}

impl Ensemble {
    /// Whether ZooKeeper is installed (the test command installs Debian's `zookeeper`).
    pub fn available() -> bool {
        Path::new(JAR).exists() && Command::new("java").arg("-version").output().is_ok()
    }

    /// Starts `n` servers under `dir` and waits until each serves (at most 60 s).
    pub fn start(dir: &Path, n: usize) -> Result<Self, String> {
        let _ = std::fs::remove_dir_all(dir);
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, peer, election)) in ports.iter().enumerate() {
            let id = i + 1;
            let sdir = dir.join(format!("zk{id}"));
            std::fs::create_dir_all(sdir.join("data")).map_err(|e| e.to_string())?;
            std::fs::write(sdir.join("data").join("myid"), format!("{id}\n"))
                .map_err(|e| e.to_string())?;
            let mut cfg = format!(
                "tickTime=200\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={client}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=srvr,ruok\nmaxSessionTimeout=60000\nminSessionTimeout=400\n",
                sdir.join("data").display()
            );
            if n > 1 {
                for (j, (_, p, e)) in ports.iter().enumerate() {
                    cfg += &format!("server.{}=127.0.0.1:{p}:{e}\n", j + 1);
                }
            }
            let _ = (peer, election);
            std::fs::write(sdir.join("zoo.cfg"), cfg).map_err(|e| e.to_string())?;
            servers.push(Server {
                id,
                client_port: *client,
                dir: sdir,
                watchdog: None,
            });
        }
        let mut e = Self {
            servers,
            dir: dir.to_path_buf(),
        };
        for i in 0..n {
            e.start_server(i)?;
        }
        e.wait_serving(Duration::from_secs(60))?;
        Ok(e)
    }

    fn start_server(&mut self, i: usize) -> Result<(), String> {
        let s = &mut self.servers[i];
        let cfg = s.dir.join("zoo.cfg");
        let pidfile = s.dir.join("java.pid");
        let _ = std::fs::remove_file(&pidfile);
        // The watchdog stops the server when the test process (or the server) ends.
        let script = format!(
            "java -Dzookeeper.log.dir={dir} -Dzookeeper.jmx.log4j.disable=true -cp {CONF}:{JAR} org.apache.zookeeper.server.quorum.QuorumPeerMain {cfg} > {dir}/out.log 2>&1 & j=$!; echo $j > {pid}; while kill -0 {me} 2>/dev/null && kill -0 $j 2>/dev/null; do sleep 0.5; done; kill -9 $j 2>/dev/null",
            dir = s.dir.display(),
            cfg = cfg.display(),
            pid = pidfile.display(),
            me = std::process::id(),
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start ZooKeeper server {}: {e}", s.id))?;
        s.watchdog = Some(child);
        Ok(())
    }

    /// The connect string of every server: `127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every running server serves, with one leader (at most `limit`).
    pub fn wait_serving(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let modes: Vec<Option<String>> = self
                .servers
                .iter()
                .filter(|s| s.watchdog.is_some())
                .map(|s| mode(s.client_port))
                .collect();
            let leaders = modes
                .iter()
                .filter(|m| matches!(m.as_deref(), Some("leader" | "standalone")))
                .count();
            if modes.iter().all(Option::is_some) && leaders == 1 {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "the ensemble does not serve within {limit:?}: {modes:?} (logs in {})",
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the leading server, if one leads.
    pub fn leader(&self) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| mode(s.client_port).as_deref() == Some("leader"))
    }

    /// Kills server `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        let s = &mut self.servers[i];
        if let Ok(pid) = std::fs::read_to_string(s.dir.join("java.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        if let Some(mut w) = s.watchdog.take() {
            let _ = w.wait();
        }
    }

    /// Starts server `i` again from its data dir.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.start_server(i)
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
