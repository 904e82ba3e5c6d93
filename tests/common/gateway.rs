//! Runs the built `ringgate` binary as a child process against a config written to a temp file, the
//! way an operator would. Reads its stderr log on a thread (every line kept for assertions), waits for
//! the `ready` line and takes the listening addresses from the `listening` lines.
//!
//! The child is always ours to kill: Drop sends SIGTERM to its PID, then SIGKILL after a grace period.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `start` waits for the `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway binary Cargo built for these tests.
pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringgate")
}

/// A file in the temp dir, removed on Drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(suffix: &str, contents: &str) -> TempFile {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "ringgate-test-{}-{}-{}{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            nanos,
            suffix
        ));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile { path }
    }

    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Lines a child wrote, shared with the reader threads.
#[derive(Default)]
struct LogBuf {
    lines: Mutex<Vec<String>>,
    cv: Condvar,
    /// The readers stop reading (the child's pipes fill up) while set.
    paused: std::sync::atomic::AtomicBool,
}

impl LogBuf {
    fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
        self.cv.notify_all();
    }
    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn spawn_reader(r: impl Read + Send + 'static, log: Arc<LogBuf>, tag: &'static str) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            while log.paused.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    // Shown by the test harness only when the test fails (output capture).
                    eprintln!("[{tag}] {s}");
                    log.push(s);
                }
            }
        }
    });
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    log: Arc<LogBuf>,
    addrs: Vec<SocketAddr>,
    workers: Option<usize>,
    exit: Option<ExitStatus>,
    _config: TempFile,
}

impl Gateway {
    /// `ringgate run CONFIG`; panics (with the log) unless it becomes ready within `READY_TIMEOUT`.
    pub fn start(toml: &str) -> Gateway {
        Gateway::start_with_args(toml, &[])
    }

    /// `ringgate run CONFIG ARGS…`.
    pub fn start_with_args(toml: &str, args: &[&str]) -> Gateway {
        match Gateway::try_start(toml, args) {
            Ok(g) => g,
            Err(e) => panic!("gateway did not start: {e}\nconfig:\n{toml}"),
        }
    }

    /// Like `start_with_args`, returning the reason (with the log) instead of panicking.
    pub fn try_start(toml: &str, args: &[&str]) -> Result<Gateway, String> {
        Gateway::try_start_with_env(toml, args, &[])
    }

    /// Like `try_start`, with extra environment variables for the gateway process.
    pub fn try_start_with_env(
        toml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Gateway, String> {
        Gateway::try_start_wrapped(toml, args, env, &[])
    }

    /// Like `try_start_with_env`, run through `wrapper` (a command that ends by exec'ing the
    /// gateway binary and arguments it is given, so the child's pid stays the gateway's).
    pub fn try_start_wrapped(
        toml: &str,
        args: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Result<Gateway, String> {
        let config = TempFile::new(".toml", toml);
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(gateway_bin());
                c
            }
            None => Command::new(gateway_bin()),
        };
        let mut child = cmd
            .envs(env.iter().copied())
            .arg("run")
            .arg(&config.path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", gateway_bin()))?;
        let log = Arc::new(LogBuf::default());
        if let Some(e) = child.stderr.take() {
            spawn_reader(e, log.clone(), "gw");
        }
        if let Some(o) = child.stdout.take() {
            spawn_reader(o, log.clone(), "gw-out");
        }
        let mut gw = Gateway {
            child,
            log,
            addrs: Vec::new(),
            workers: None,
            exit: None,
            _config: config,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let lines = gw.log.snapshot();
            if let Some(ready) = lines.iter().find(|l| is_event(l, "ready")) {
                gw.workers = kv(ready, "workers").and_then(|w| w.parse().ok());
                for l in lines.iter().filter(|l| is_event(l, "listening")) {
                    if let Some(a) = kv(l, "addr").and_then(|a| a.parse::<SocketAddr>().ok()) {
                        if !gw.addrs.contains(&a) {
                            gw.addrs.push(a);
                        }
                    }
                }
                if gw.addrs.is_empty() {
                    return Err(format!(
                        "ready without a parsable listening line; log:\n{}",
                        lines.join("\n")
                    ));
                }
                return Ok(gw);
            }
            if let Ok(Some(st)) = gw.child.try_wait() {
                gw.exit = Some(st);
                // Give the reader threads a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "exited with {st} before ready; log:\n{}",
                    gw.log.snapshot().join("\n")
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no ready line within {READY_TIMEOUT:?}; log:\n{}",
                    lines.join("\n")
                ));
            }
            let g = gw.log.lines.lock().unwrap_or_else(|p| p.into_inner());
            let _ = gw.log.cv.wait_timeout(g, Duration::from_millis(20));
        }
    }

    /// Stops (`true`) or resumes reading the gateway's stderr and stdout: stopped, its pipes fill
    /// up as behind a stuck log collector. Takes effect after the line being read.
    pub fn pause_output(&self, paused: bool) {
        self.log
            .paused
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listening address, in log order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// `workers=N` from the ready line.
    pub fn workers(&self) -> Option<usize> {
        self.workers
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size from /proc/PID/status (VmRSS), in KiB.
    pub fn rss_kb(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: libc::c_int) {
        if self.exit.is_none() {
            // SAFETY: kill(2) on the PID of our own child, which we have not reaped yet.
            unsafe {
                libc::kill(self.pid() as libc::pid_t, sig);
            }
        }
    }

    /// The config file the gateway was started with.
    pub fn config_path(&self) -> &Path {
        &self._config.path
    }

    /// Replaces the config file the gateway was started with (for reload tests).
    pub fn rewrite_config(&self, toml: &str) {
        std::fs::write(&self._config.path, toml).expect("rewrite config");
    }

    /// SIGHUP, then waits for the `reloaded generation=N` line.
    pub fn reload_to(&self, generation: u64) {
        self.signal(libc::SIGHUP);
        let line = format!("generation={generation}");
        assert!(
            self.wait_log(&line, Duration::from_secs(10)),
            "no reload to generation {generation}: {:?}",
            self.logs()
        );
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
                return self.exit;
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// All log lines so far (stderr and stdout).
    pub fn logs(&self) -> Vec<String> {
        self.log.snapshot()
    }

    /// The admin API's address, from its "admin listening" log line (the config asked for port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self
            .logs()
            .into_iter()
            .find(|l| l.contains("admin listening"))
            .expect("admin listening line");
        kv(&line, "addr")
            .and_then(|a| a.parse().ok())
            .expect("admin addr")
    }

    /// Sends SIGTERM and waits (at most 10 s) for exit code 0; returns how long the drain took.
    pub fn sigterm_drain_time(&mut self) -> Duration {
        let t = Instant::now();
        self.sigterm();
        let st = self
            .wait_exit(Duration::from_secs(10))
            .expect("no exit within 10 s of SIGTERM");
        assert_eq!(st.code(), Some(0));
        t.elapsed()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.snapshot().iter().any(|l| l.contains(needle))
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        self.sigterm();
        if self.wait_exit(Duration::from_secs(3)).is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.wait_exit(Duration::from_secs(5));
        }
    }
}

/// Whether `line` is a log event `<time> <LEVEL> <message> …` whose message is `msg`.
pub fn is_event(line: &str, msg: &str) -> bool {
    line.split_whitespace().nth(2) == Some(msg)
}

/// The value of `key=value` in a log line.
pub fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Result of a short CLI invocation.
#[derive(Debug)]
pub struct CliOutput {
    /// None if it had to be killed after the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    /// stdout and stderr together, for "somewhere in the output" assertions.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `ringgate ARGS…` to completion (killed after `timeout`).
pub fn run_cli(args: &[&str], timeout: Duration) -> CliOutput {
    let mut child = Command::new(gateway_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringgate");
    let read_all = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read_all(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = read_all(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CliOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `ringgate check FILE` for a config given as text.
pub fn check_config(toml: &str) -> (CliOutput, TempFile) {
    let f = TempFile::new(".toml", toml);
    let out = run_cli(&["check", &f.path_str()], Duration::from_secs(20));
    (out, f)
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
