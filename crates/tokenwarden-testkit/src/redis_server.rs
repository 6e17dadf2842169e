//! A real `redis-server` process on a free loopback port, for tests of Redis-backed caches.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a fresh server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness is polled while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long `pause` and `resume` wait for the process state to change.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How many free ports `start` tries when another process wins the race for one.
const PORT_ATTEMPTS: usize = 5;
/// How much of the server's output is kept for error messages.
const LOG_TAIL_BYTES: usize = 4096;

/// A `redis-server` child process owned by a test, listening on `127.0.0.1` on a free port.
///
/// The server keeps nothing on disk (`--save "" --appendonly no`) and is killed when this value
/// is dropped. [`kill`](RedisServer::kill) and [`restart`](RedisServer::restart) simulate an outage:
/// the server comes back on the same port with the same arguments, so clients can reconnect.
/// [`pause`](RedisServer::pause) and [`resume`](RedisServer::resume) simulate a stall: the server
/// keeps its connections and data, and answers everything it was sent meanwhile when it resumes.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use tokenwarden_testkit::RedisServer;
///
/// let mut server = RedisServer::start_with_args(&["--requirepass", "pw"]).await?;
/// let url = format!("redis://:pw@127.0.0.1:{}", server.port());
/// // ... connect to `url`, then simulate an outage:
/// server.kill().await;
/// server.restart().await?;
/// # let _ = url;
/// # Ok(())
/// # }
/// ```
pub struct RedisServer {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
    log: Arc<Mutex<Vec<u8>>>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The arguments may hold a password (`--requirepass`), so only their count is shown.
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("extra_args", &self.args.len())
            .field("pid", &self.child.as_ref().and_then(Child::id))
            .finish()
    }
}

impl RedisServer {
    /// Starts `redis-server` from `PATH` on a free loopback port and waits until it answers `PING`.
    pub async fn start() -> io::Result<RedisServer> {
        RedisServer::start_with_args(&[]).await
    }

    /// Like [`start`](RedisServer::start), with extra arguments such as `["--requirepass", "pw"]`.
    pub async fn start_with_args(args: &[&str]) -> io::Result<RedisServer> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut server = RedisServer {
                port,
                args: args.clone(),
                child: None,
                log: Arc::new(Mutex::new(Vec::new())),
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                // The server exited before answering: most likely another process took the port
                // between our probe and its bind; try another one.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("could not start redis-server")))
    }

    /// The URL clients connect to: `redis://127.0.0.1:PORT` (add credentials yourself).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on; it stays the same across [`restart`](RedisServer::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with `SIGKILL` and waits for it to exit. The port is kept for
    /// [`restart`](RedisServer::restart). Killing a server that is not running does nothing.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error here means the process has already exited, which is what we want.
            let _ = child.kill().await;
        }
    }

    /// Stops the server with `SIGSTOP`, as a stall would (a long fork, a paused VM): connections
    /// stay open, the kernel still accepts new ones and buffers what clients send, but nothing is
    /// read or answered until [`resume`](RedisServer::resume), when the server works through it
    /// all. Returns once the process is stopped (where `/proc` shows it; elsewhere once the signal
    /// is sent). Fails if the server is not running.
    pub async fn pause(&mut self) -> io::Result<()> {
        self.signal("STOP", true).await
    }

    /// Continues a server stopped by [`pause`](RedisServer::pause) with `SIGCONT`. Returns once
    /// the process runs again (where `/proc` shows it).
    pub async fn resume(&mut self) -> io::Result<()> {
        self.signal("CONT", false).await
    }

    /// Sends `SIGSTOP` or `SIGCONT` with the `kill` command (no unsafe code, no FFI), then waits
    /// until the process state says it took effect.
    async fn signal(&mut self, signal: &str, stopped: bool) -> io::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| io::Error::other("redis-server is not running"))?;
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "kill -{signal} {pid} failed: {status}"
            )));
        }
        let deadline = Instant::now() + SIGNAL_TIMEOUT;
        loop {
            match is_stopped(pid) {
                // No `/proc` here: the signal was sent, which is all we can know.
                None => return Ok(()),
                Some(state) if state == stopped => return Ok(()),
                Some(_) if Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "redis-server did not take SIGSTOP/SIGCONT ({signal}) within {SIGNAL_TIMEOUT:?}"
                        ),
                    ));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    /// Starts the server again on the same port with the same arguments (killing it first if it
    /// is still running) and waits until it answers `PING`.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill().await;
        self.spawn_and_wait().await
    }

    async fn spawn_and_wait(&mut self) -> io::Result<()> {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "redis-server not found on PATH; install it (apt-get install redis-server)",
                )
            } else {
                io::Error::new(e.kind(), format!("could not spawn redis-server: {e}"))
            }
        })?;
        if let Ok(mut log) = self.log.lock() {
            log.clear();
        }
        // Drain the output so the server never blocks on a full pipe; keep the tail for errors.
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(drain_into(stdout, Arc::clone(&self.log)));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(drain_into(stderr, Arc::clone(&self.log)));
        }
        self.child = Some(child);
        self.wait_until_ready().await
    }

    async fn wait_until_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(io::Error::other("redis-server is not running"));
            };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                let log = self.log_tail();
                let kind = if log.contains("Address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!(
                        "redis-server on port {} exited before it was ready ({status}): {log}",
                        self.port
                    ),
                ));
            }
            if answers_ping(self.port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill().await;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}: {}",
                        self.port,
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn log_tail(&self) -> String {
        match self.log.lock() {
            Ok(log) => String::from_utf8_lossy(&log).trim().to_owned(),
            Err(_) => String::new(),
        }
    }
}

/// Whether process `pid` is stopped by a signal, from `/proc/PID/stat`; `None` where that file
/// cannot be read or parsed (no `/proc`).
fn is_stopped(pid: u32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `PID (COMM) STATE ...`; COMM may hold spaces and parentheses, so split at the last `)`.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    Some(state == "T" || state == "t")
}

/// Reserves a free loopback port by binding port 0, then releases it for the server.
fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

/// Whether a server on `port` answers an inline `PING`. A password-protected server answers
/// `-NOAUTH`, which also proves it is up; `-LOADING` and silence do not.
async fn answers_ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        io::Result::Ok(buf[..n].to_vec())
    };
    match tokio::time::timeout(Duration::from_secs(1), attempt).await {
        Ok(Ok(reply)) => reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"),
        _ => false,
    }
}

async fn drain_into(mut from: impl tokio::io::AsyncRead + Unpin, log: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let Ok(mut log) = log.lock() else { break };
        log.extend_from_slice(&buf[..n]);
        if log.len() > LOG_TAIL_BYTES {
            let excess = log.len() - LOG_TAIL_BYTES;
            log.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_answers_and_survives_a_restart() {
        let mut server = RedisServer::start().await.unwrap();
        let port = server.port();
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
        assert!(answers_ping(port).await);
        server.kill().await;
        assert!(!answers_ping(port).await);
        server.restart().await.unwrap();
        assert_eq!(server.port(), port);
        assert!(answers_ping(port).await);
    }

    #[tokio::test]
    async fn a_paused_server_answers_nothing_until_it_resumes() {
        let mut server = RedisServer::start().await.unwrap();
        let port = server.port();
        server.pause().await.unwrap();
        assert!(
            !answers_ping(port).await,
            "a stopped server answers nothing"
        );
        server.resume().await.unwrap();
        assert!(answers_ping(port).await);
        // A stopped server can still be killed and restarted.
        server.pause().await.unwrap();
        server.restart().await.unwrap();
        assert!(answers_ping(port).await);
        server.kill().await;
        assert!(server.pause().await.is_err(), "nothing to pause");
    }

    #[tokio::test]
    async fn password_protected_server_is_ready_and_debug_hides_the_password() {
        let server = RedisServer::start_with_args(&["--requirepass", "hunter2"])
            .await
            .unwrap();
        assert!(answers_ping(server.port()).await);
        assert!(!format!("{server:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn bad_arguments_are_reported_with_the_server_output() {
        let err = RedisServer::start_with_args(&["--no-such-option", "x"])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("exited before it was ready"),
            "{err}"
        );
    }
}
