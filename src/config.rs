//! Loading the TOML config: text -> raw serde structs -> validated `model::Config`.
//!
//! Pipeline: `decode::parse` (TOML syntax; one error, the parser cannot go on) -> `decode::decode`
//! (each top-level entity separately, so independent type errors and unknown keys are all reported)
//! -> `validate::compile` (defaults, ranges, names, references, address resolution; every problem is
//! reported). Problems carry a key path; `locate` turns them into `file:line:column` at the end.
//! All-or-nothing: a file with any problem yields no `Config`. Never panics on any input.

mod decode;
mod locate;
pub(crate) mod matchers;
pub mod model;
pub(crate) mod net;
mod raw;
mod summary;
mod units;
mod validate;
pub use validate::MIN_PUBLIC_TOKEN;

use std::path::Path;

pub use summary::summary;

/// One config problem, located in the file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem has no position (e.g. the file cannot be read).
    pub line: usize,
    /// 1-based, in characters; 0 when `line` is 0.
    pub column: usize,
    /// Dotted key path, e.g. `routes[2].service`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Line 0: no position (the file could not be read at all), so no `:0:0`.
        if self.line == 0 {
            return write!(f, "{}: {}: {}", self.file, self.key, clip(&self.message));
        }
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file,
            self.line,
            self.column,
            self.key,
            clip(&self.message)
        )
    }
}

/// A message as printed: one that quotes a huge value (a 10 MB name) is cut, so an error line
/// (also logged on a failed reload) stays a line.
fn clip(message: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 400;
    if message.len() <= MAX {
        return message.into();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} bytes in all)",
        message.get(..end).unwrap_or_default(),
        message.len()
    )
    .into()
}

/// The largest file the config reads: the config itself and the files it names (certificates,
/// keys, htpasswd, JWKS). A mistyped path such as `/dev/zero` would otherwise read until memory
/// runs out.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads `path` whole, refusing more than `MAX_FILE_BYTES` (and a directory, with a clear error).
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(std::io::Error::other("it is a directory"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB (is it the right file?)",
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(bytes)
}

/// Read, parse and validate `path`. On failure returns every error found (at least one).
pub fn load(path: &Path) -> Result<model::Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    let bytes = read_file(path).map_err(|e| {
        vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: "(file)".to_owned(),
            message: format!("cannot read the config file: {e}"),
        }]
    })?;
    let text = String::from_utf8(bytes).map_err(|e| vec![not_utf8(&file, &e)])?;
    compile(&text, &file, path)
}

/// A config file that is not UTF-8 (TOML requires it): located at the first invalid byte, so the
/// stray Latin-1 character or binary garbage can be found.
fn not_utf8(file: &str, e: &std::string::FromUtf8Error) -> ConfigError {
    let bytes = e.as_bytes();
    let at = e.utf8_error().valid_up_to();
    // Everything before `at` is valid UTF-8 by definition.
    let before = std::str::from_utf8(bytes.get(..at).unwrap_or_default()).unwrap_or_default();
    let (line, column) = locate::line_col(before, before.len());
    let byte = bytes.get(at).copied().unwrap_or_default();
    ConfigError {
        file: file.to_owned(),
        line,
        column,
        key: "(file)".to_owned(),
        message: format!(
            "the config file is not valid UTF-8 (byte 0x{byte:02x} at offset {at}); TOML files must be UTF-8"
        ),
    }
}

/// Parse and validate `text` as if read from `file` (used in messages and as `Config::source`).
pub fn load_str(text: &str, file: &str) -> Result<model::Config, Vec<ConfigError>> {
    compile(text, file, Path::new(file))
}

fn compile(text: &str, file: &str, source: &Path) -> Result<model::Config, Vec<ConfigError>> {
    let doc = match decode::parse(text) {
        Ok(doc) => doc,
        Err(p) => {
            let named = !p.path.0.is_empty();
            let mut e = p.locate(file, text, None);
            if !named {
                e.key = "(syntax)".to_owned();
            }
            return Err(vec![e]);
        }
    };
    if doc.as_table().is_empty() {
        // Every setting has a default, so an empty file would validate into a gateway with no
        // routes, answering 404 to everything. The likely cause is a file caught mid-rewrite (a
        // tool truncates, then writes) by a reload: keep the running config instead.
        return Err(vec![ConfigError {
            file: file.to_owned(),
            line: 1,
            column: 1,
            key: "(file)".to_owned(),
            message: "the config is empty (no settings at all); refusing a gateway with no routes"
                .to_owned(),
        }]);
    }
    let mut problems = Vec::new();
    let decoded = decode::decode(&doc, &mut problems);
    let config = validate::compile(&decoded, source.to_path_buf(), &mut problems);
    if let (Some(c), true) = (&config, problems.is_empty()) {
        validate::check_chains(c, &mut problems);
    }
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => {
            let mut errors: Vec<ConfigError> = problems
                .into_iter()
                .map(|p| p.locate(file, text, Some(&doc)))
                .collect();
            // File order reads best; stable, so problems at one position keep their discovery order.
            errors.sort_by_key(|e| (e.line, e.column));
            if errors.is_empty() {
                // Unreachable by construction (compile returns None only after a problem), but an
                // empty error list would break `load`'s contract, so say something.
                errors.push(ConfigError {
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    key: "(top level)".to_owned(),
                    message: "invalid config".to_owned(),
                });
            }
            Err(errors)
        }
    }
}

/// Certificates clients will refuse, or soon will: expired, not valid yet, or expiring within
/// `EXPIRY_WARNING_DAYS`. Not errors: a gateway may have to serve one while a new one is on its
/// way, as nginx does; `check`, start and every reload say so, and
/// `ringgate_tls_certificate_expiry_timestamp_seconds` shows when.
pub fn certificate_warnings(cfg: &model::Config, now: std::time::SystemTime) -> Vec<String> {
    let day = 86_400;
    let date = |t: std::time::SystemTime| {
        let mut out = Vec::new();
        crate::log::push_rfc3339(&mut out, t);
        String::from_utf8_lossy(out.get(..10).unwrap_or(&out)).into_owned()
    };
    let mut out = Vec::new();
    for c in &cfg.certificates {
        let Some((not_before, not_after)) = c.validity else {
            continue;
        };
        let file = c.cert_file.display();
        if let Ok(ago) = now.duration_since(not_after) {
            out.push(format!(
                "certificate {file} expired on {} ({} days ago): clients will refuse it",
                date(not_after),
                ago.as_secs() / day
            ));
        } else if now < not_before {
            out.push(format!(
                "certificate {file} is not valid until {}: clients will refuse it until then",
                date(not_before)
            ));
        } else if let Ok(left) = not_after.duration_since(now) {
            if left.as_secs() < EXPIRY_WARNING_DAYS * day {
                out.push(format!(
                    "certificate {file} expires on {} (in {} days)",
                    date(not_after),
                    left.as_secs() / day
                ));
            }
        }
    }
    out
}

/// See `certificate_warnings`.
pub const EXPIRY_WARNING_DAYS: u64 = 14;

/// Settings that load but are probably a mistake, said at start, on every reload and by `check`.
/// A cors plugin with `origins = ["*"]` and `credentials = true` reflects any Origin with
/// `Access-Control-Allow-Credentials: true`, as Kong does: every site a user visits can then make
/// requests with the user's cookies and read the answers.
pub fn config_warnings(cfg: &model::Config) -> Vec<String> {
    cfg.plugins
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match &p.config {
            model::PluginConfig::Cors(c)
                if p.enabled && c.credentials && c.origins.iter().any(|o| o == "*") =>
            {
                Some(format!(
                    "plugins[{i}] (cors): origins = [\"*\"] with credentials = true reflects any Origin with Access-Control-Allow-Credentials, so any site can make requests with a user's cookies and read the answers; list the origins"
                ))
            }
            _ => None,
        })
        .collect()
}

/// Settings that are probably a mistake with `workers` workers, said at start, on every reload and
/// by `check` (with the count the config asks for, or the CPUs `run` would use; `run --workers`
/// overrides both, and `run` says what it finds with the count it runs): a `max_conns`
/// below the worker count, which cannot hold (each worker allows at least one request in flight).
pub fn worker_warnings(cfg: &model::Config, workers: usize) -> Vec<String> {
    let mut out = Vec::new();
    for u in &cfg.upstreams {
        // A name with several addresses is several targets with one limit each: said once.
        let mut said: Vec<&str> = Vec::new();
        for t in &u.targets {
            let Some(max) = t.max_conns.filter(|&m| (m as usize) < workers) else {
                continue;
            };
            if said.contains(&t.name.as_str()) {
                continue;
            }
            said.push(&t.name);
            out.push(format!(
                "upstream {:?} target {:?}: max_conns = {max} is below the {workers} workers; each worker allows at least 1 in flight, so up to {workers} at once (a worker count that divides max_conns makes the limit exact)",
                u.name, t.name
            ));
        }
    }
    out
}

/// What `ringgate check` prints: `Ok(warnings + "ok\n" + summary)`, or `Err` with one error per
/// line followed by a count. The caller prints it and exits 0 or 1.
pub fn check(path: &Path) -> Result<String, String> {
    match load(path) {
        Ok(cfg) => {
            let warnings: String = certificate_warnings(&cfg, std::time::SystemTime::now())
                .into_iter()
                .chain(config_warnings(&cfg))
                .chain(worker_warnings(
                    &cfg,
                    cfg.server.workers.unwrap_or_else(|| {
                        crate::worker::auto_workers(&crate::worker::allowed_cpus())
                    }),
                ))
                .collect::<Vec<String>>()
                .iter()
                .map(|w| format!("warning: {w}\n"))
                .collect();
            Ok(format!("{warnings}ok\n{}", summary(&cfg)))
        }
        Err(errors) => {
            let mut out: String = errors.iter().map(|e| format!("{e}\n")).collect();
            let n = errors.len();
            out.push_str(&format!("{n} error{}\n", if n == 1 { "" } else { "s" }));
            Err(out)
        }
    }
}
