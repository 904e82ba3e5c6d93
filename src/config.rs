//! Loading the TOML config: raw serde structs -> validated `model::Config`. TODO(helper-config)

pub mod model;

use std::path::Path;

/// One config problem, located in the file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `routes[2].service`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.key, self.message
        )
    }
}

/// Read, parse and validate `path`. On failure returns every error found (at least one).
pub fn load(_path: &Path) -> Result<model::Config, Vec<ConfigError>> {
    todo!()
}

/// Human summary for `ringgate check`. (stub)
pub fn summary(_cfg: &model::Config) -> String {
    String::new()
}
