//! Parked connections: a keep-alive connection that stays idle for `PARK_AFTER` ends its task.
//! What remains is a record here (under 100 bytes, plus rustls' state for a TLS connection, whose
//! close here sends its close_notify) and its socket in this worker's epoll set,
//! registered one-shot for readability. nginx keeps an idle keep-alive connection the same way: a
//! registered fd and a small struct. One watcher task per worker waits on the epoll fd through the
//! runtime (io_uring: a poll on the epoll fd; epoll fallback: a nested registration) and starts a
//! fresh connection task for each socket that turns readable: a request, EOF or an error, which the
//! task sorts out as for any read. The control loop sweeps expired keep-alive deadlines; draining
//! closes every parked connection.
//!
//! Invariants:
//! - a parked connection still counts in `Shard::active` and keeps its idle-registry slot; whoever
//!   ends it here (sweep, drain, a failed resume) ends its `ConnGuard`, which accounts for it once;
//! - a record's fd is in the epoll set exactly while the record exists: it is removed before the fd
//!   is closed or handed to a task, so no stale event can name a reused record (the key also carries
//!   the fd, checked on wake);
//! - the worker's thread only; no `RefCell` borrow crosses an `.await` or a call that could re-enter.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::{At, ConnGuard};
use crate::worker::Shard;

/// How many readiness events one `epoll_wait` call takes.
const EVENT_BATCH: usize = 64;

pub struct ParkingLot {
    /// The epoll set; `None` if it could not be created, and then connections do not park.
    ep: Option<OwnedFd>,
    cars: RefCell<Vec<Option<Car>>>,
    free: RefCell<Vec<u32>>,
    /// Deadlines are milliseconds since this instant.
    epoch: Instant,
}

/// One parked connection: what its next task needs besides the socket.
struct Car {
    /// `at.fd` is the parked socket, owned by the lot.
    at: At,
    /// A TLS connection's rustls state (keys, sequence numbers, a partial record): a few KiB,
    /// against the task's ~12 KiB and its buffers.
    tls: Option<Box<rustls::ServerConnection>>,
    served: u64,
    /// Keep-alive deadline, ms since `epoch`.
    until_ms: u64,
}

impl Default for ParkingLot {
    fn default() -> Self {
        // SAFETY: plain syscall; a non-negative result is a new fd that we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let ep = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
        if ep.is_none() {
            crate::warn!(
                "epoll_create1 failed, idle connections will not park error=\"{}\"",
                std::io::Error::last_os_error()
            );
        }
        ParkingLot {
            ep,
            cars: RefCell::default(),
            free: RefCell::default(),
            epoch: Instant::now(),
        }
    }
}

impl Car {
    /// A TLS connection's close_notify, best effort, before the lot closes `fd` (a plain one has
    /// nothing to say).
    fn close_notify(&mut self, fd: RawFd) {
        if let Some(tls) = self.tls.as_mut() {
            crate::tls::server::close_parked(fd, tls);
        }
    }
}

fn key(idx: usize, fd: RawFd) -> u64 {
    ((idx as u64) << 32) | u64::from(fd as u32)
}

impl ParkingLot {
    /// Whether connections can park here.
    pub fn available(&self) -> bool {
        self.ep.is_some()
    }

    /// Parks `tcp` until it turns readable or `left` passes. On any failure the connection simply
    /// closes (`guard` and `tcp` drop), as it would have at its keep-alive deadline.
    pub(super) fn park(
        &self,
        tcp: TcpStream,
        tls: Option<Box<rustls::ServerConnection>>,
        mut guard: ConnGuard,
        served: u64,
        left: Duration,
    ) {
        let Some(ep) = &self.ep else { return };
        if guard.shard.draining.get() {
            // Draining has already closed the lot: close now rather than wait out the deadline.
            if let Some(mut tls) = tls {
                crate::tls::server::close_parked(tcp.as_raw_fd(), &mut tls);
            }
            return;
        }
        // Our own descriptor for the socket: the runtime's handle (and whatever the runtime
        // registered for it) goes with `tcp`, without any ownership hand-off that could fail.
        // SAFETY: fcntl on a descriptor `tcp` keeps open; a non-negative result is ours.
        let fd = unsafe { libc::fcntl(tcp.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return;
        }
        drop(tcp);
        let until = Instant::now() + left;
        let until_ms = u64::try_from(until.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let car = Car {
            at: At { fd, ..guard.at },
            tls,
            served,
            until_ms,
        };
        let idx = {
            let mut cars = self.cars.borrow_mut();
            let reuse = self.free.borrow_mut().pop().map(|i| i as usize);
            match reuse.filter(|&i| i < cars.len()) {
                Some(i) => {
                    cars[i] = Some(car);
                    i
                }
                None => {
                    cars.push(Some(car));
                    cars.len() - 1
                }
            }
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: key(idx, fd),
        };
        // SAFETY: both fds are open; `ev` is a valid event. A socket that is readable already (its
        // next request raced the park) is reported at once, so nothing is missed.
        if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            // Not registered: close it and let `guard` account for the connection.
            if let Some((sock, mut car)) = self.take(idx, fd) {
                car.close_notify(sock.as_raw_fd());
            }
            return;
        }
        guard.handed_over = true;
    }

    /// Removes record `idx` if it still holds `fd` (from the epoll set too) and hands its socket's
    /// ownership to the caller, with the record.
    fn take(&self, idx: usize, fd: RawFd) -> Option<(OwnedFd, Car)> {
        let car = {
            let mut cars = self.cars.borrow_mut();
            let slot = cars.get_mut(idx)?;
            if slot.as_ref().map(|c| c.at.fd) != Some(fd) {
                return None;
            }
            slot.take()?
        };
        let car_fd = car.at.fd;
        self.free.borrow_mut().push(idx as u32);
        if let Some(ep) = &self.ep {
            // SAFETY: removing an fd we own from our epoll set (a no-op error if never added).
            unsafe {
                libc::epoll_ctl(
                    ep.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    car_fd,
                    std::ptr::null_mut(),
                );
            }
        }
        // SAFETY: the record owned this fd; it is open and now nobody else's.
        Some((unsafe { OwnedFd::from_raw_fd(car_fd) }, car))
    }

    fn car_fd_and_due(&self, idx: usize, now_ms: u64) -> Option<(RawFd, bool)> {
        let cars = self.cars.borrow();
        let car = cars.get(idx)?.as_ref()?;
        Some((car.at.fd, car.until_ms <= now_ms))
    }

    /// Closes one parked connection (a TLS one with its close_notify) and ends its accounting.
    fn close(&self, shard: &Rc<Shard>, idx: usize, fd: RawFd) {
        if let Some((sock, mut car)) = self.take(idx, fd) {
            car.close_notify(sock.as_raw_fd());
            drop(sock);
            drop(ConnGuard::new(shard.clone(), car.at));
        }
    }

    /// Closes parked connections whose keep-alive deadline has passed (the sweep: no per-connection
    /// timer).
    pub fn sweep(&self, shard: &Rc<Shard>, now: Instant) {
        let now_ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let n = self.cars.borrow().len();
        for idx in 0..n {
            if let Some((fd, true)) = self.car_fd_and_due(idx, now_ms) {
                self.close(shard, idx, fd);
            }
        }
    }

    /// Draining: closes every parked connection.
    pub fn close_all(&self, shard: &Rc<Shard>) {
        let n = self.cars.borrow().len();
        for idx in 0..n {
            if let Some((fd, _)) = self.car_fd_and_due(idx, 0) {
                self.close(shard, idx, fd);
            }
        }
    }

    /// A parked socket turned readable (or hung up): give it a connection task again.
    fn wake(&self, shard: &Rc<Shard>, key: u64) {
        let (idx, fd) = ((key >> 32) as usize, key as u32 as RawFd);
        let Some((sock, mut car)) = self.take(idx, fd) else {
            return;
        };
        let guard = ConnGuard::new(shard.clone(), car.at);
        if shard.draining.get() {
            car.close_notify(sock.as_raw_fd());
            return; // `sock` and `guard` drop: closed and accounted.
        }
        // SAFETY: `sock` is an open TCP socket fd that we own; ownership moves to the stream.
        let std =
            unsafe { std::net::TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(sock)) };
        // On error `from_std` has dropped (closed) the socket; `guard` accounts for it.
        let Ok(tcp) = TcpStream::from_std(std) else {
            return;
        };
        match car.tls {
            None => drop(monoio::spawn(super::run(tcp, guard, car.served))),
            Some(tls) => {
                let stream = crate::tls::server::ServerStream::resume(tcp, tls);
                drop(monoio::spawn(super::run(stream, guard, car.served)));
            }
        }
    }
}

impl Drop for ParkingLot {
    fn drop(&mut self) {
        // The worker is gone: close what is still parked (no accounting left to do).
        for car in self.cars.get_mut().drain(..).flatten() {
            // SAFETY: the record owned this fd.
            drop(unsafe { OwnedFd::from_raw_fd(car.at.fd) });
        }
    }
}

/// The worker's watcher: waits for the epoll set to have events and wakes their connections.
pub async fn watch(shard: Rc<Shard>) {
    let Some(epfd) = shard.parked.ep.as_ref().map(|e| e.as_raw_fd()) else {
        return;
    };
    // The runtime polls a descriptor it owns: give it a duplicate of the epoll fd, typed as a stream
    // only so the runtime's readiness wait can take it (nothing else is ever called on it).
    // SAFETY: fcntl on our open epoll fd; a non-negative result is a new fd we own.
    let dup = unsafe { libc::fcntl(epfd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        crate::error!(
            "parked connections cannot be watched error=\"{}\"",
            std::io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: `dup` is open and ours; ownership moves to the wrapper.
    let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(dup) };
    let waiter = match monoio::net::UnixStream::from_std(std) {
        Ok(w) => w,
        Err(e) => {
            crate::error!("parked connections cannot be watched error=\"{}\"", e);
            return;
        }
    };
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENT_BATCH];
    loop {
        if waiter.readable(false).await.is_err() {
            return;
        }
        loop {
            // SAFETY: `events` has room for EVENT_BATCH entries; timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(epfd, events.as_mut_ptr(), EVENT_BATCH as libc::c_int, 0)
            };
            let Ok(n) = usize::try_from(n) else { break };
            for ev in events.iter().take(n) {
                let key = ev.u64;
                shard.parked.wake(&shard, key);
            }
            if n < EVENT_BATCH {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_carry_the_record_and_the_fd() {
        let k = key(70_000, 1234);
        assert_eq!((k >> 32) as usize, 70_000);
        assert_eq!(k as u32 as i32, 1234);
    }
}
