//! `[access_log]`: where the JSON access log goes, and how workers batch it.
//!
//! The file is opened at start (and again on every reload and SIGUSR1), so a path that cannot work
//! is reported here, located, instead of at run time: a directory, a file in a directory that does
//! not exist, or one this process may not write. The checks use `access(2)` and never create the
//! file (`ringgate check` has no side effects). A relative path is relative to the config file's
//! directory, like certificate and key files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::push;
use crate::config::locate::{KeyPath, Problem};
use crate::config::model::{AccessLogDef, AccessLogTarget};
use crate::config::raw::RawAccessLog;

pub const DEFAULT_BUFFER: usize = 64 << 10;
const MIN_BUFFER: u64 = 4 << 10;
const MAX_BUFFER: u64 = 16 << 20;
pub const DEFAULT_FLUSH: Duration = Duration::from_secs(1);
/// Workers look at their buffers on their 50 ms control tick: a shorter interval could not be kept.
const MIN_FLUSH: Duration = Duration::from_millis(50);
const MAX_FLUSH: Duration = Duration::from_secs(60);

/// `None` when `[access_log]` is absent (or invalid: then a problem was recorded).
pub fn compile(
    raw: Option<&RawAccessLog>,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Option<AccessLogDef> {
    let raw = raw?;
    let p = KeyPath::root().key("access_log");
    let before = problems.len();
    let target = match raw.path.as_deref() {
        None => {
            push(
                problems,
                p.key("path"),
                "`path` is required: a file path, \"stdout\" or \"stderr\" (remove [access_log] to log nothing)",
            );
            None
        }
        Some("stdout") => Some(AccessLogTarget::Stdout),
        Some("stderr") => Some(AccessLogTarget::Stderr),
        Some(f) => file_target(f, base, &p.key("path"), problems).map(AccessLogTarget::File),
    };
    let mut buffer_size = DEFAULT_BUFFER;
    if let Some(size) = raw.buffer_size {
        if (MIN_BUFFER..=MAX_BUFFER).contains(&size.0) {
            buffer_size = usize::try_from(size.0).unwrap_or(DEFAULT_BUFFER);
        } else {
            push(
                problems,
                p.key("buffer_size"),
                format!("must be between \"4k\" and \"16m\", got {} bytes", size.0),
            );
        }
    }
    let mut flush_interval = DEFAULT_FLUSH;
    if let Some(d) = raw.flush_interval {
        if (MIN_FLUSH..=MAX_FLUSH).contains(&d.0) {
            flush_interval = d.0;
        } else {
            push(
                problems,
                p.key("flush_interval"),
                "must be between \"50ms\" and \"60s\" (workers hand their lines over on their 50 ms control tick)",
            );
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(AccessLogDef {
        target: target?,
        buffer_size,
        flush_interval,
    })
}

/// The absolute path of a file target, if it can be opened for appending.
fn file_target(f: &str, base: &Path, at: &KeyPath, problems: &mut Vec<Problem>) -> Option<PathBuf> {
    if f.is_empty() {
        push(
            problems,
            at.clone(),
            "must be a file path, \"stdout\" or \"stderr\" (remove [access_log] to log nothing)",
        );
        return None;
    }
    if f.contains('\0') {
        push(problems, at.clone(), "must not contain a NUL character");
        return None;
    }
    let path = base.join(f);
    if f.ends_with('/') || path.is_dir() {
        push(
            problems,
            at.clone(),
            format!(
                "{} is a directory; name a file in it (e.g. {})",
                path.display(),
                path.join("access.log").display()
            ),
        );
        return None;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        push(
            problems,
            at.clone(),
            format!("directory {} {what}", dir.display()),
        );
        return None;
    }
    // The file is created if missing (so the directory must be writable), else appended to.
    let (probe, what) = if path.exists() {
        (path.as_path(), "file")
    } else {
        (dir.as_path(), "directory")
    };
    if let Err(e) = writable(probe) {
        push(
            problems,
            at.clone(),
            format!(
                "{what} {} is not writable by this process (uid {}): {e}",
                probe.display(),
                // SAFETY: geteuid has no preconditions and cannot fail.
                unsafe { libc::geteuid() }
            ),
        );
        return None;
    }
    Some(path)
}

/// `access(path, W_OK)`: whether this process may write `path` (checked with its real ids, which
/// for a daemon are its effective ones).
pub(super) fn writable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
