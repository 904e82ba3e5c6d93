//! Binary upgrade without dropping a connection (`kill -USR2 <pid>`, as with nginx), and readiness
//! for service managers (`sd_notify`).
//!
//! ```text
//! old process  SIGUSR2 -> start argv[0] with the same arguments, its listening sockets inherited
//!              (RINGGATE_INHERITED_FDS) and the write end of a pipe (RINGGATE_UPGRADE_READY_FD)
//! new process  loads its config, adopts the inherited sockets for the same addresses (binds
//!              the rest), starts its workers, writes one byte to the pipe: "ready"
//! old process  ready: drains as on SIGTERM, but leaves the sockets open (the new process accepts
//!              from them); no answer within UPGRADE_WAIT, or the new process exited: it is
//!              killed and the old one serves on as if nothing happened
//! ```
//!
//! Why hand sockets over instead of letting a new process bind its own SO_REUSEPORT sockets next to
//! the old ones: a listening socket's accept queue dies with it. Connections the kernel had
//! already queued on the old process's sockets when it closes them are reset; an upgrade under
//! load measured 5-25 reset connections per upgrade that way (8 s of wrk with a new connection per
//! request, 2 workers). An inherited socket is the same socket, so its queue survives.
//!
//! Invariants:
//! - nothing here runs on a worker: the old side runs on the main thread, the new side at start;
//! - a process that handed its sockets over never calls `shutdown` on them (that would stop the
//!   new process's listeners too): its workers only cancel their accepts (see `worker::Control`);
//! - an inherited fd is adopted only if it is a listening TCP socket; anything else named in the
//!   environment is ignored (and logged), never closed, since it is not ours to judge;
//! - the variables are removed from the environment once read, so nothing started later sees them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::{error, info, warn};

/// Inherited listening sockets: `L<i>:<fd>` (a gateway listener of the old config's `listen`
/// entry `i`) or `A:<fd>` (the admin listener), comma-separated, in the old process's listen order
/// (entry by entry, worker by worker).
pub const ENV_FDS: &str = "RINGGATE_INHERITED_FDS";
/// The write end of the readiness pipe: one byte once the new process serves.
pub const ENV_READY: &str = "RINGGATE_UPGRADE_READY_FD";
/// What the old process's target names last resolved to (`net::export_last_good`): the new one
/// loads the config with them as its own memory, so a name the resolver cannot answer for during
/// the upgrade keeps its addresses there too, as it would on a reload, instead of failing it.
pub const ENV_LAST_GOOD: &str = "RINGGATE_LAST_GOOD_ADDRS";
/// How long the old process waits for the new one to be ready.
pub const UPGRADE_WAIT: Duration = Duration::from_secs(60);

/// What an inherited socket was in the old process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A gateway listener for `listen` entry N.
    Listener(usize),
    Admin,
}

/// Listening sockets handed over by the process that started this one, and its readiness pipe.
#[derive(Default)]
pub struct Inherited {
    socks: Vec<(Role, SocketAddr, TcpListener)>,
    ready: Option<std::fs::File>,
}

impl Inherited {
    /// Reads and clears `RINGGATE_INHERITED_FDS` and `RINGGATE_UPGRADE_READY_FD`; empty when this
    /// process was started normally. Call before any thread starts (the environment is changed).
    pub fn from_env() -> Inherited {
        let list = std::env::var_os(ENV_FDS);
        let ready = std::env::var_os(ENV_READY);
        let last_good = std::env::var_os(ENV_LAST_GOOD);
        std::env::remove_var(ENV_FDS);
        std::env::remove_var(ENV_READY);
        std::env::remove_var(ENV_LAST_GOOD);
        // Only from an old process handing over (its fd list and readiness pipe came too): on a
        // plain start the variable is ignored, so it cannot steer names a resolver does not
        // answer for, forward-auth's included, to addresses the environment chose.
        if let (Some(v), true) = (last_good, list.is_some() && ready.is_some()) {
            crate::config::net::import_last_good(&v.to_string_lossy());
        }
        let mut inherited = Inherited::parse(&list.unwrap_or_default().to_string_lossy());
        if let Some(fd) = ready {
            match fd.to_string_lossy().parse::<RawFd>() {
                Ok(fd) if fd > 2 => {
                    // SAFETY: the pipe's write end, handed to this process for exactly one byte;
                    // close-on-exec again, like every other fd of ours.
                    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
                    // SAFETY: as above; owned here from now on.
                    inherited.ready = Some(unsafe { std::fs::File::from_raw_fd(fd) });
                }
                _ => warn!("upgrade: bad {ENV_READY}={fd:?}"),
            }
        }
        inherited
    }

    /// Adopts the listening sockets `list` names (`L0:<fd>,A:<fd>,…`).
    fn parse(list: &str) -> Inherited {
        let mut socks = Vec::new();
        let mut seen = Vec::new();
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let parsed = item.split_once(':').and_then(|(role, fd)| {
                let role = match role {
                    "A" => Role::Admin,
                    _ => Role::Listener(role.strip_prefix('L')?.parse().ok()?),
                };
                Some((role, fd.parse::<RawFd>().ok()?))
            });
            // A number listed twice would be owned twice (and closed twice).
            let Some((role, fd)) = parsed.filter(|(_, fd)| !seen.contains(fd)) else {
                warn!("upgrade: ignoring inherited fd entry={item:?}");
                continue;
            };
            seen.push(fd);
            match adopt(fd) {
                Some((addr, l)) => socks.push((role, addr, l)),
                None => warn!("upgrade: inherited fd={fd} is not a listening TCP socket; ignored"),
            }
        }
        if !socks.is_empty() {
            info!("upgrade: inherited listening sockets count={}", socks.len());
        }
        Inherited { socks, ready: None }
    }

    /// An inherited socket of `role` bound to `addr`, if there is one left: a gateway listener of
    /// any entry with that exact address, or, for port 0 (a config that let the kernel pick), one of
    /// the same entry with the same IP (an unchanged config finds its own; two port-0 entries never
    /// swap sockets).
    pub fn take(&mut self, role: Role, addr: SocketAddr) -> Option<TcpListener> {
        let same_kind = |r: &Role| {
            matches!(
                (r, role),
                (Role::Listener(_), Role::Listener(_)) | (Role::Admin, Role::Admin)
            )
        };
        let i = self
            .socks
            .iter()
            .position(|(r, a, _)| same_kind(r) && *a == addr)
            .or_else(|| {
                (addr.port() == 0).then(|| {
                    self.socks
                        .iter()
                        .position(|(r, a, _)| *r == role && a.ip() == addr.ip())
                })?
            })?;
        Some(self.socks.remove(i).2)
    }

    /// Inherited sockets the config has no use for (an address its `listen` dropped; surplus
    /// sockets of a smaller `workers` are kept, see `server::bind_all`) are closed (the old
    /// process still holds them until it exits; connections queued on them then are reset);
    /// returns the readiness pipe, for `notify_ready`.
    pub fn close_unused(self) -> Option<std::fs::File> {
        for (role, addr, _) in &self.socks {
            warn!("upgrade: inherited socket not in the config role={role:?} addr={addr}; closed");
        }
        self.ready
    }
}

/// An integer `SOL_SOCKET` option of `fd`; `None` when `fd` is not a socket (or not open). One
/// system call, no allocation: also used between fork and exec.
fn socket_option(fd: RawFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on a caller-named fd with a properly sized out-parameter; fails harmlessly
    // (EBADF, ENOTSOCK) for anything that is not a socket.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// `fd` as a listener if it is a listening TCP socket (it is then owned here).
fn adopt(fd: RawFd) -> Option<(SocketAddr, TcpListener)> {
    let listening = socket_option(fd, libc::SO_ACCEPTCONN).is_some_and(|v| v != 0);
    let stream = socket_option(fd, libc::SO_TYPE) == Some(libc::SOCK_STREAM);
    // Checked before taking ownership: a socket that is not ours to adopt (a unix one) must not
    // be closed here.
    let inet = matches!(
        socket_option(fd, libc::SO_DOMAIN),
        Some(libc::AF_INET) | Some(libc::AF_INET6)
    );
    if fd < 3 || !listening || !stream || !inet {
        return None;
    }
    // SAFETY: a listening stream socket that the old process handed to this one (it stays open
    // there too, as its own reference); from here on this process owns its fd.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let sock = socket2::Socket::from(owned);
    let addr = sock.local_addr().ok()?.as_socket()?;
    // Back to close-on-exec, like every other fd of ours.
    let _ = sock.set_cloexec(true);
    Some((addr, sock.into()))
}

/// The new process's half: tells the old process, if it was started by one, and a service
/// manager that it serves.
pub fn notify_ready(ready: Option<std::fs::File>) {
    if let Some(mut pipe) = ready {
        let _ = pipe.write_all(b"R");
    }
    sd_notify(&format!("READY=1\nMAINPID={}", std::process::id()));
}

/// Tells a service manager the process is stopping (systemd `Type=notify`).
pub fn notify_stopping() {
    sd_notify("STOPPING=1");
}

/// `sd_notify(3)` without libsystemd: one datagram to `$NOTIFY_SOCKET`, if set. With
/// `Type=notify` and `NotifyAccess=all`, systemd follows the new process's MAINPID across an
/// upgrade instead of stopping the unit when the old one exits.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        warn!("sd_notify failed error=\"{e}\"");
    }
}

/// The old process's half: what it hands over.
pub struct Handover {
    /// Gateway listeners (listen order, then worker order) and the admin listener.
    pub fds: Vec<(Role, RawFd)>,
    /// This process's workers: what its listener groups are steered to (`worker::steer_reuseport`).
    pub workers: usize,
}

/// How an upgrade attempt ended.
pub enum Outcome {
    /// The new process serves: drain and exit.
    Ready { pid: u32 },
    /// It did not come up; this process serves on.
    Failed,
}

impl Handover {
    /// Starts argv[0] with this process's arguments and sockets and waits (at most `wait`) for it
    /// to be ready. Blocks the calling (main) thread; workers keep serving meanwhile. `give_up` is
    /// asked several times a second whether to give the upgrade up (a SIGTERM came): then the new
    /// process is ended as if it had failed, and this one goes on to drain.
    pub fn run(&self, wait: Duration, give_up: &mut dyn FnMut() -> bool) -> Outcome {
        let mut args = std::env::args_os();
        let Some(program) = args.next() else {
            error!("upgrade failed: no argv[0]");
            return Outcome::Failed;
        };
        let (read_end, write_end) = match pipe() {
            Ok(p) => p,
            Err(e) => {
                error!("upgrade failed: pipe error=\"{e}\"");
                return Outcome::Failed;
            }
        };
        let fds: Vec<RawFd> = self
            .fds
            .iter()
            .map(|(_, fd)| *fd)
            .chain([write_end.as_raw_fd()])
            .collect();
        let list = self
            .fds
            .iter()
            .map(|(role, fd)| match role {
                Role::Listener(entry) => format!("L{entry}:{fd}"),
                Role::Admin => format!("A:{fd}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        let ready_fd = write_end.as_raw_fd();
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .env(ENV_FDS, list)
            .env(ENV_READY, write_end.as_raw_fd().to_string())
            .env(ENV_LAST_GOOD, crate::config::net::export_last_good());
        // SAFETY: runs in the child between fork and exec; close_range and fcntl are
        // async-signal-safe system calls and allocate nothing.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                // Everything else closes at exec, whatever its flags: the runtime's accepted client
                // sockets are not all close-on-exec, and one inherited by the new process would
                // stay open after this process closed it, leaving its client waiting for an end.
                if libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) != 0
                {
                    // Before Linux 5.11: one fcntl per possible fd.
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                        lim.rlim_cur.min(1 << 20) as RawFd
                    } else {
                        1 << 16
                    };
                    for fd in 3..max {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                for &fd in &fds {
                    // Only a socket that still listens: a number whose listener has closed since
                    // (a worker that failed to set it up) may name a client socket by now, which
                    // must not reach the new process.
                    let listening = socket_option(fd, libc::SO_ACCEPTCONN).is_some_and(|v| v != 0);
                    if (fd == ready_fd || listening) && libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                error!(
                    "upgrade failed: cannot start {} error=\"{e}\"; still serving",
                    program.to_string_lossy()
                );
                return Outcome::Failed;
            }
        };
        // Only the child may hold the write end: its exit then reads as EOF here.
        drop(write_end);
        info!(
            "upgrade started pid={} program={}",
            child.id(),
            program.to_string_lossy()
        );
        match wait_ready(read_end, wait, give_up) {
            Ok(()) => {
                info!("upgrade: new process ready pid={}; draining", child.id());
                let pid = child.id();
                // Not waited for: it outlives this process (and is reparented when we exit).
                drop(child);
                Outcome::Ready { pid }
            }
            Err(NotReady::Exited) => {
                // Its exit closed the pipe, maybe before its log thread wrote why (the config
                // error an operator needs): it is given a moment to finish, not killed on the spot.
                let status = reap(&mut child, EXIT_GRACE);
                error!(
                    "upgrade failed: the new process exited before it was ready ({status}); \
                     its own log lines above say why; still serving"
                );
                self.steer_back();
                Outcome::Failed
            }
            Err(NotReady::Other(why)) => {
                error!("upgrade failed: {why}; still serving");
                stop(&mut child);
                self.steer_back();
                Outcome::Failed
            }
        }
    }
}

impl Handover {
    /// A new process that got as far as binding steered each listener group to its own worker
    /// count; it is gone now, so the groups are steered back to this process's workers.
    fn steer_back(&self) {
        let mut done: Vec<usize> = Vec::new();
        for &(role, fd) in &self.fds {
            let Role::Listener(entry) = role else {
                continue;
            };
            if done.contains(&entry) {
                continue;
            }
            done.push(entry);
            // SAFETY: the fd is one of this process's open listeners (it owns them until exit).
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            if let Err(e) = crate::worker::steer_reuseport(fd, self.workers) {
                warn!("reuseport steering failed listen_entry={entry} error=\"{e}\"");
            }
        }
    }
}

/// Why a new process did not say ready.
enum NotReady {
    /// The pipe reached EOF: it exited (or closed the pipe) first.
    Exited,
    /// It is still running (timed out, given up for a stop signal) or the pipe failed.
    Other(String),
}

/// How long a new process that closed the readiness pipe gets to exit on its own (its log thread
/// flushes for up to 1 s at exit) before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Waits for the ready byte. `give_up` is asked every 100 ms whether to give up.
fn wait_ready(
    read_end: OwnedFd,
    wait: Duration,
    give_up: &mut dyn FnMut() -> bool,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + wait;
    let mut pipe = std::fs::File::from(read_end);
    loop {
        if give_up() {
            return Err(NotReady::Other("given up for a stop signal".to_owned()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NotReady::Other(format!(
                "not ready within {} s",
                wait.as_secs()
            )));
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(100) as libc::c_int;
        // SAFETY: one valid pollfd for the pipe's read end.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            continue;
        }
        let mut b = [0u8; 1];
        return match pipe.read(&mut b) {
            Ok(1) => Ok(()),
            Ok(_) => Err(NotReady::Exited),
            Err(e) => Err(NotReady::Other(format!("readiness pipe error=\"{e}\""))),
        };
    }
}

/// Ends a new process that did not come up: SIGKILL (it never said ready, so it serves nothing a
/// client could miss, and a drain of its own would stop the sockets it shares with us), then reaps it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Reaps a new process that is exiting on its own, waiting at most `grace` before killing it;
/// says how it ended (`exit code 1`, `killed after 2 s`).
fn reap(child: &mut Child, grace: Duration) -> String {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                return match (
                    st.code(),
                    std::os::unix::process::ExitStatusExt::signal(&st),
                ) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(sig)) => format!("killed by signal {sig}"),
                    (None, None) => st.to_string(),
                }
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                stop(child);
                return format!(
                    "it closed the readiness pipe and was killed after {} s",
                    grace.as_secs()
                );
            }
            Err(e) => {
                stop(child);
                return format!("wait error=\"{e}\"");
            }
        }
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills both fds on success; O_CLOEXEC so only the listed fds reach the child.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopts_only_listening_tcp_sockets_and_matches_by_address() {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr_a = a.local_addr().expect("addr");
        let addr_b = b.local_addr().expect("addr");
        let connected = std::net::TcpStream::connect(addr_a).expect("connect");
        // Handed over: this test's own fds become the inherited ones.
        let fd_a = std::os::fd::IntoRawFd::into_raw_fd(a);
        let fd_b = std::os::fd::IntoRawFd::into_raw_fd(b);
        let list = format!(
            "L0:{fd_a},A:{fd_b},L1:{},X:7,L:nope,L2:{fd_a}",
            connected.as_raw_fd()
        );
        let mut got = Inherited::parse(&list);
        assert_eq!(
            got.socks.len(),
            2,
            "the connected socket and bad entries are not adopted"
        );
        // Role and address must both match; port 0 takes the same IP's first.
        assert!(got.take(Role::Admin, addr_a).is_none());
        assert!(
            got.take(Role::Listener(1), "127.0.0.1:0".parse().expect("addr"))
                .is_none(),
            "port 0 takes only its own entry's socket"
        );
        let unspecified: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let l = got
            .take(Role::Listener(0), unspecified)
            .expect("port 0 match");
        assert_eq!(l.local_addr().expect("addr"), addr_a);
        assert!(got.take(Role::Listener(0), addr_a).is_none(), "taken once");
        let admin = got.take(Role::Admin, addr_b).expect("admin");
        assert_eq!(admin.local_addr().expect("addr"), addr_b);
        assert!(got.close_unused().is_none());
        drop(connected);
    }
}
