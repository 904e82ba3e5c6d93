//! Integration-test harness shared by every file in tests/: the gateway process (`gateway`), loopback
//! upstream servers that record every byte they receive (`upstream`), a raw HTTP/1.1 client
//! (`client`) and a minimal WebSocket codec (`ws`).
//!
//! Each test binary compiles this module and uses a different subset of it, hence the allows below.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod gateway;
pub mod mutate;
pub mod pebble;
pub mod redis;
pub mod upstream;
pub mod ws;

pub use client::{contains, get, send_raw, try_send_raw, Conn, RawResponse, IO_TIMEOUT};
pub use gateway::{check_config, run_cli, CliOutput, Gateway, TempFile};
pub use upstream::{blackhole, pattern_byte, refusing_addr, Behaviour, RecordedRequest, Upstream};

use std::time::Duration;

/// Whether a test must go without `tool` (run with `args`, e.g. `--version`): false when it runs.
/// When it does not, the test fails, naming what to install, unless `RINGGATE_ALLOW_MISSING_TOOLS=1`
/// is set: then it prints SKIPPED and the caller returns. A test that passes by skipping would
/// say a behaviour works that nobody checked (`.ci/run` installs every tool the suite needs).
pub fn tool_missing(tool: &str, args: &[&str], install: &str) -> bool {
    let runs = std::process::Command::new(tool)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if runs {
        return false;
    }
    if std::env::var("RINGGATE_ALLOW_MISSING_TOOLS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {tool} is not installed ({install})");
        return true;
    }
    panic!(
        "this test needs {tool}, which is not installed ({install}); \
         set RINGGATE_ALLOW_MISSING_TOOLS=1 to skip the tests that need it"
    );
}

/// Host header the tests send when the host does not matter.
pub const HOST: &str = "test.local";

/// A gateway config: one worker, one `url` service pointing at `up`, one catch-all route (`paths =
/// ["/"]`, `strip_path = false`). `server_extra` is appended inside `[server]` (it may end with a
/// `[server.timeouts]` table); `route_extra` inside the route.
pub fn basic_config(up: &Upstream, server_extra: &str, route_extra: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1
{server_extra}

[[services]]
name = "svc"
url = "{url}"

[[routes]]
name = "all"
service = "svc"
paths = ["/"]
strip_path = false
{route_extra}
"#,
        url = up.url()
    )
}

/// Starts a one-worker gateway in front of `up` with `basic_config`.
pub fn gateway_for(up: &Upstream) -> Gateway {
    Gateway::start(&basic_config(up, "", ""))
}

/// Raises this process's RLIMIT_NOFILE soft limit to at least `want` (capped at the hard limit);
/// returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a properly initialised struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < want as libc::rlim_t {
            r.rlim_cur = (want as libc::rlim_t).min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        }
        r.rlim_cur as u64
    }
}

/// A short pause for "nothing else happens afterwards" assertions (e.g. that no delayed forward reaches
/// an upstream after the client already got its error).
pub fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}

/// Hour windows are calendar-aligned: start in a fresh hour if this one ends within a minute, so a
/// window boundary cannot fall inside a test that counts against an hourly limit.
pub fn away_from_hour_end() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = 3_600 - now % 3_600;
    if left < 60 {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

/// First value of header `name` (case-insensitive) in a parsed header list.
pub fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    header_all_of(headers, name).into_iter().next()
}

/// Every value of header `name` (case-insensitive), in wire order.
pub fn header_all_of<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}
