//! A real `redis-server` on a loopback port, started and stopped by a test.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process on 127.0.0.1, with no persistence; killed on drop.
///
/// [`RedisServer::start`] returns `None` (after saying so on stderr) when `redis-server` is
/// not installed, so a developer without it can still run the rest; under `CI=true` a
/// missing server is a loud failure instead (CI installs it: `.ci/run`).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    binary: PathBuf,
    child: Option<Child>,
}

/// Where `redis-server` is: `REDIS_SERVER` if set, else the first one on `PATH` (or in
/// `/usr/bin`, `/usr/sbin`, `/usr/local/bin`).
pub fn redis_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// When the server does not start, or when `redis-server` is missing and `CI=true`.
    pub fn start() -> Option<Self> {
        let Some(binary) = redis_server_binary() else {
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!(
                    "redis-server is not installed, and CI must run the Redis tests: \
                     install it (apt-get install -y redis-server; .ci/run does this)"
                );
            }
            eprintln!("SKIPPED: redis-server is not installed (apt-get install -y redis-server)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free loopback port");
        let mut server = Self {
            port,
            binary,
            child: None,
        };
        server.resume();
        Some(server)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across [`stop`](Self::stop) and
    /// [`resume`](Self::resume)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (its data is gone) and waits until the port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty).
    ///
    /// # Panics
    ///
    /// When it does not accept connections within 10 s.
    pub fn resume(&mut self) {
        self.stop();
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
