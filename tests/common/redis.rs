//! A real `redis-server` on a free loopback port for the cluster rate-limit tests; killed (by PID)
//! when dropped. `Redis::available()` tells whether the binary is installed (`.ci/run` installs it).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The redis-server we started; killed by PID when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// `--requirepass`, when started with one.
    password: Option<String>,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        Self::start_with(None)
    }

    /// A server that wants `AUTH password` first (`--requirepass`).
    pub fn start_with(password: Option<&str>) -> Option<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Self::spawn(port, password)?;
        let password = password.map(str::to_owned);
        let r = Redis {
            child,
            port,
            password,
        };
        r.wait_up();
        Some(r)
    }

    /// Kills the server and starts an empty one on the same port (no persistence: a restart, or a
    /// failover, that lost every key).
    pub fn restart_empty(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child =
            Self::spawn(self.port, self.password.as_deref()).expect("restart redis-server");
        self.wait_up();
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn spawn(port: u16, password: Option<&str>) -> Option<Child> {
        let auth = password.map(|p| ["--requirepass", p]);
        Command::new("redis-server")
            .args(auth.iter().flatten())
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    }

    pub fn client(&self) -> redis::RedisResult<redis::Connection> {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        redis::Client::open(format!("redis://{auth}127.0.0.1:{}", self.port))?
            .get_connection_with_timeout(Duration::from_millis(200))
    }

    pub fn ping(&self) -> bool {
        self.client()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on the PID of the child we spawned.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }
}
