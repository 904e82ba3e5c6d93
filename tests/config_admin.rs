//! `[admin]` and `[metrics]`: defaults, values and located errors.

use std::time::Duration;

use ringgate::config::{load_str, ConfigError};

const BASE: &str = r#"[[upstreams]]
name = "u"
targets = [{ target = "127.0.0.1:9001" }]

[[services]]
name = "s"
upstream = "u"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#;

fn with(extra: &str) -> String {
    format!("{BASE}\n{extra}")
}

/// Line of `extra`'s first line in `with(extra)`.
const EXTRA_LINE: usize = 14;

fn one_error(text: &str) -> ConfigError {
    match load_str(text, "t.toml") {
        Ok(_) => panic!("loaded but should not:\n{text}"),
        Err(mut e) => {
            assert_eq!(e.len(), 1, "{e:?}");
            e.remove(0)
        }
    }
}

#[test]
fn defaults() {
    let cfg = load_str(BASE, "t.toml").unwrap_or_else(|e| panic!("{e:?}"));
    assert!(cfg.admin.is_none(), "no [admin] = no admin listener");
    assert!(cfg.metrics.enabled);
    assert_eq!(cfg.metrics.flush_interval, Duration::from_secs(1));
    assert!(cfg.metrics.histogram_file.is_none());
    assert!(!cfg.metrics.per_consumer_labels);
    assert_eq!(cfg.metrics.max_consumer_labels, 100);

    let cfg = load_str(&with("[admin]\n"), "t.toml").unwrap_or_else(|e| panic!("{e:?}"));
    let admin = cfg.admin.unwrap_or_else(|| panic!("admin"));
    assert_eq!(admin.listen.to_string(), "127.0.0.1:9901");
    assert!(admin.token.is_none());
}

#[test]
fn values() {
    let text = with(
        "[admin]\nlisten = \"0.0.0.0:9000\"\ntoken = \"abc-DEF_123-456789\"\n\n[metrics]\nenabled = false\nflush_interval = \"100ms\"\nhistogram_file = \"/tmp/h.txt\"\nper_consumer_labels = true\nmax_consumer_labels = 5\n",
    );
    let cfg = load_str(&text, "t.toml").unwrap_or_else(|e| panic!("{e:?}"));
    let admin = cfg.admin.unwrap_or_else(|| panic!("admin"));
    assert_eq!(admin.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(admin.token.as_deref(), Some("abc-DEF_123-456789"));
    assert!(!cfg.metrics.enabled);
    assert_eq!(cfg.metrics.flush_interval, Duration::from_millis(100));
    assert_eq!(
        cfg.metrics.histogram_file.as_deref(),
        Some(std::path::Path::new("/tmp/h.txt"))
    );
    assert!(cfg.metrics.per_consumer_labels);
    assert_eq!(cfg.metrics.max_consumer_labels, 5);
}

#[test]
fn errors_are_located() {
    let e = one_error(&with("[admin]\nlisten = \"localhost:9901\"\n"));
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (EXTRA_LINE + 1, 10, "admin.listen")
    );
    assert!(e.message.contains("not an ip:port address"), "{e}");

    let e = one_error(&with("[admin]\nlisten = \"0.0.0.0:9901\"\n"));
    assert_eq!((e.line, e.key.as_str()), (EXTRA_LINE + 1, "admin.listen"));
    assert!(e.message.contains("set admin.token"), "{e}");

    // Beyond loopback the token is all that guards /reload: a short one is refused.
    let e = one_error(&with(
        "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"abc-DEF_123\"\n",
    ));
    assert_eq!((e.line, e.key.as_str()), (EXTRA_LINE + 2, "admin.token"));
    assert!(e.message.contains("at least 16 characters"), "{e}");
    assert!(!e.message.contains("abc-DEF"), "{e}");

    let e = one_error(&with("[admin]\ntoken = \"has space\"\n"));
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (EXTRA_LINE + 1, 9, "admin.token")
    );

    let e = one_error(&with("[admin]\ntokn = \"x\"\n"));
    assert_eq!((e.line, e.key.as_str()), (EXTRA_LINE + 1, "admin.tokn"));
    assert!(e.message.contains("did you mean `token`"), "{e}");

    let e = one_error(&with("[metrics]\nflush_interval = \"20ms\"\n"));
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (EXTRA_LINE + 1, 18, "metrics.flush_interval")
    );
    assert!(e.message.contains("between \"50ms\" and \"60s\""), "{e}");

    let e = one_error(&with("[metrics]\nflush_interval = 5\n"));
    assert_eq!(e.key, "metrics.flush_interval");

    let e = one_error(&with(
        "[metrics]\nper_consumer_labels = true\nmax_consumer_labels = 0\n",
    ));
    assert_eq!(
        (e.line, e.key.as_str()),
        (EXTRA_LINE + 2, "metrics.max_consumer_labels")
    );
    assert!(e.message.contains("1..=10000"), "{e}");

    // A cap for per-consumer labels that are off would be silently ignored.
    let e = one_error(&with("[metrics]\nmax_consumer_labels = 50\n"));
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (EXTRA_LINE + 1, 23, "metrics.max_consumer_labels")
    );
    assert!(e.message.contains("per_consumer_labels = true"), "{e}");
    // Written off explicitly (a reload turning the labels off) keeps the cap without an error.
    let text = with("[metrics]\nper_consumer_labels = false\nmax_consumer_labels = 50\n");
    assert!(load_str(&text, "test.toml").is_ok());

    // A directory is not a file: the histograms would be lost at shutdown.
    let e = one_error(&with("[metrics]\nhistogram_file = \"/tmp\"\n"));
    assert_eq!(
        (e.line, e.column, e.key.as_str()),
        (EXTRA_LINE + 1, 18, "metrics.histogram_file")
    );
    assert!(e.message.contains("is a directory"), "{e}");

    let e = one_error(&with("[metrics]\nhistogram_file = \"\"\n"));
    assert_eq!(e.key, "metrics.histogram_file");

    // `check` must catch what `run` would only find at bind time, or at shutdown.
    let e = one_error(&with("[admin]\nlisten = \"127.0.0.1:8080\"\n"));
    assert_eq!((e.line, e.key.as_str()), (EXTRA_LINE + 1, "admin.listen"));
    assert!(
        e.message
            .contains("overlaps the server listen address 0.0.0.0:8080"),
        "{e}"
    );
    let e = one_error(&with(
        "[metrics]\nhistogram_file = \"/nonexistent-ringgate-dir/h.txt\"\n",
    ));
    assert_eq!(
        (e.line, e.key.as_str()),
        (EXTRA_LINE + 1, "metrics.histogram_file")
    );
    assert!(e.message.contains("does not exist"), "{e}");

    let e = one_error(&with("[metrics]\nper_consumer_labels = \"yes\"\n"));
    assert_eq!(e.key, "metrics.per_consumer_labels");

    let e = one_error(&with("[metrics]\nenabled = \"no\"\n"));
    assert_eq!(e.key, "metrics.enabled");
}

#[test]
fn a_relative_histogram_file_is_relative_to_the_config_files_directory() {
    let dir = std::env::temp_dir().join(format!("ringgate-hdr-rel-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("reports")).unwrap_or_else(|e| panic!("{e}"));
    let text = with("[metrics]\nhistogram_file = \"reports/hdr.txt\"\n");
    let cfg = load_str(
        &text,
        dir.join("ringgate.toml").to_str().unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        cfg.metrics.histogram_file.as_deref(),
        Some(dir.join("reports/hdr.txt").as_path()),
        "not relative to the working directory"
    );
    // The same file next to a config elsewhere: its directory is checked there, and is missing.
    let other = dir.join("elsewhere");
    std::fs::create_dir_all(&other).unwrap_or_else(|e| panic!("{e}"));
    let e = load_str(
        &text,
        other.join("ringgate.toml").to_str().unwrap_or_default(),
    );
    std::fs::remove_dir_all(&dir).ok();
    let e = e
        .err()
        .unwrap_or_else(|| panic!("accepted a missing directory"));
    assert!(format!("{e:?}").contains("does not exist"), "{e:?}");
}
