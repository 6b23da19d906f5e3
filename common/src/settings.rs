//! Command-line settings with a TOML config file, for every p2pfs binary.
//!
//! Each option of a binary has one name, its long flag, and four possible
//! sources, in this order of precedence: the command line, its environment
//! variable (where it has one), the config file, the built-in default. The
//! config file's keys are the long flag names (`repair-interval-ms = 500`;
//! `repair_interval_ms` is accepted too); values are TOML strings,
//! integers, floats, booleans (for switches: `true` sets it) or arrays (for
//! repeatable options). A table named after a subcommand (`[mount]`) holds
//! options for that subcommand only and overrides the top level for it; a
//! top-level key applies to every subcommand that has such an option.
//!
//! How: [`parse`] finds the file (`--config FILE`, else the binary's
//! environment variable, else a default path if that file exists), reads
//! which options the command line and environment already set (clap's
//! value sources), and appends `--name=value` for every other option the
//! file sets before clap parses for real, so clap still validates every
//! value and `--help` stays the one description of every option. A key that
//! names no option is an error (a misspelt option is never silently
//! ignored), as is a key for a positional argument.
//!
//! Example files: `dist/config/` in the repository.

use clap::{ArgAction, Parser};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Why settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The command line (with the file's options added) is invalid, or
    /// `--help`/`--version` was asked for: call `clap::Error::exit`.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key of the config file names no option (or a positional argument,
    /// which only the command line sets), or its value has the wrong shape.
    #[error("config file {path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Which key and why.
        message: String,
    },
}

impl SettingsError {
    /// Prints the error and exits: clap's own formatting and status (0 for
    /// `--help`, 2 for usage errors) for [`SettingsError::Cli`], else the
    /// message and status 2.
    pub fn exit(self) -> ! {
        match self {
            SettingsError::Cli(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses the process's command line into `P` with a config file layered
/// between the environment and the defaults (see the module docs).
///
/// The file is `--config FILE` on the command line, else the value of the
/// environment variable `config_env`, else `default_file` if it exists.
/// `P` should declare `--config` itself (with `env = config_env`) so that
/// `--help` shows it; its value is not used again.
///
/// Errors: [`SettingsError`]; call [`SettingsError::exit`] in `main`.
pub fn parse<P: Parser>(config_env: &str, default_file: Option<PathBuf>) -> Result<P, SettingsError> {
    parse_from(std::env::args_os().collect(), |k| std::env::var_os(k), config_env, default_file)
}

/// [`parse`] with the arguments (program name first) and the environment
/// given, for tests. `env` must be the same environment clap reads (clap
/// reads the process environment itself for options with `env`).
pub fn parse_from<P: Parser>(
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
    config_env: &str,
    default_file: Option<PathBuf>,
) -> Result<P, SettingsError> {
    let path = config_path(&args).or_else(|| env(config_env).filter(|v| !v.is_empty()).map(PathBuf::from));
    let path = match path {
        Some(p) => p,
        None => match default_file.filter(|p| p.is_file()) {
            Some(p) => p,
            None => return Ok(P::try_parse_from(args)?),
        },
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|source| SettingsError::Read { path: path.clone(), source })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::Syntax { path: path.clone(), message: e.to_string() })?;
    let args = with_file_options(P::command(), args, &table, &path)?;
    let matches = P::command().try_get_matches_from(args)?;
    Ok(P::from_arg_matches(&matches)?)
}

/// The value of `--config` on the command line, if any (before a `--`).
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            return None;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// `args` with `--name=value` added for each option `table` sets that the
/// command line and environment do not.
fn with_file_options(
    cmd: clap::Command,
    mut args: Vec<OsString>,
    table: &toml::Table,
    path: &Path,
) -> Result<Vec<OsString>, SettingsError> {
    let key_err = |message: String| SettingsError::Key { path: path.to_path_buf(), message };
    // Every key must name an option somewhere (top level or any
    // subcommand); a table must name a subcommand.
    for (key, value) in table {
        if let toml::Value::Table(inner) = value {
            let Some(sc) = cmd.find_subcommand(key) else {
                return Err(key_err(format!("[{key}] names no subcommand")));
            };
            for k in inner.keys() {
                if find_option(sc, k).is_none() && find_option(&cmd, k).is_none() {
                    return Err(key_err(format!("[{key}] {k}: no such option of `{key}` (see --help)")));
                }
            }
        } else if find_option(&cmd, key).is_none()
            && !cmd.get_subcommands().any(|sc| find_option(sc, key).is_some())
        {
            return Err(key_err(format!("{key}: no such option (see --help)")));
        }
    }

    // What the command line and environment set, and which subcommand
    // runs; errors (a required option only the file gives) are for the
    // real parse.
    let pre = cmd.clone().ignore_errors(true).try_get_matches_from(&args)?;
    let sub = pre.subcommand().map(|(name, m)| (name.to_string(), m.clone()));
    let sub_cmd = sub.as_ref().and_then(|(name, _)| cmd.find_subcommand(name).cloned());

    // The keys that apply to this run: the top level, then the
    // subcommand's table over it.
    let mut effective: Vec<(&String, &toml::Value)> = table.iter().filter(|(_, v)| !v.is_table()).collect();
    if let Some((name, _)) = &sub {
        if let Some(toml::Value::Table(inner)) = table.get(name) {
            effective.retain(|(k, _)| !inner.contains_key(k.as_str()));
            effective.extend(inner.iter());
        }
    }

    let mut root_extra = Vec::new();
    let mut sub_extra = Vec::new();
    for (key, value) in effective {
        if key == "config" {
            continue;
        }
        // The subcommand's own option first, then the root's.
        let (arg, matches, is_root) = match (&sub_cmd, &sub) {
            (Some(sc), Some((_, m))) if find_option(sc, key).is_some() => (find_option(sc, key), m, false),
            _ => (find_option(&cmd, key), &pre, true),
        };
        let Some(arg) = arg else {
            // An option of another subcommand: not for this run.
            continue;
        };
        if arg.is_positional() {
            return Err(key_err(format!("{key}: a positional argument is given on the command line only")));
        }
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        ) {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        let out = if is_root && !arg.is_global_set() { &mut root_extra } else { &mut sub_extra };
        push_option(out, long, arg.get_action(), value).map_err(|m| key_err(format!("{key}: {m}")))?;
    }
    // Root options go right after the program name (before a subcommand);
    // the subcommand's (and global ones) before a `--`, else at the end.
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.splice(end..end, sub_extra);
    args.splice(1..1, root_extra);
    Ok(args)
}

/// The option of `cmd` whose long name is `key` (`_` read as `-`).
fn find_option<'a>(cmd: &'a clap::Command, key: &str) -> Option<&'a clap::Arg> {
    let key = key.replace('_', "-");
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(key.as_str())
            || (a.is_positional() && a.get_id() == key.replace('-', "_").as_str())
    })
}

/// Appends `--long=value` (or `--long` for a switch) for one file value.
fn push_option(
    out: &mut Vec<OsString>,
    long: &str,
    action: &ArgAction,
    value: &toml::Value,
) -> Result<(), String> {
    match (action, value) {
        (ArgAction::SetTrue, toml::Value::Boolean(b)) => {
            if *b {
                out.push(format!("--{long}").into());
            }
            Ok(())
        }
        (ArgAction::SetFalse, toml::Value::Boolean(b)) => {
            if !*b {
                out.push(format!("--{long}").into());
            }
            Ok(())
        }
        (ArgAction::SetTrue | ArgAction::SetFalse, _) => Err("expects true or false".into()),
        (ArgAction::Count, toml::Value::Integer(n)) if (0..=255).contains(n) => {
            for _ in 0..*n {
                out.push(format!("--{long}").into());
            }
            Ok(())
        }
        (ArgAction::Count, _) => Err("expects a count (0 to 255)".into()),
        (ArgAction::Append, toml::Value::Array(items)) => {
            for item in items {
                out.push(format!("--{long}={}", scalar(item)?).into());
            }
            Ok(())
        }
        (_, toml::Value::Array(_)) => Err("takes one value, not a list".into()),
        (_, v) => {
            out.push(format!("--{long}={}", scalar(v)?).into());
            Ok(())
        }
    }
}

/// A TOML scalar as the text clap parses.
fn scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => Err("expects a single value".into()),
    }
}

/// Checks an example config file (`dist/config/*.toml`) against `P`, for
/// the binaries' tests: every option of `P` (and of each subcommand named
/// in `args`) appears in `text` as a key, set or commented out (`# key =
/// value`), and `text` with its commented settings switched on (those
/// whose value is not a `…` placeholder) parses, with `args` after the
/// program name. Returns the problems found; empty means the example is
/// complete and valid.
pub fn check_example<P: Parser>(text: &str, args: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut keys = std::collections::HashSet::new();
    let mut on = String::new();
    for line in text.lines() {
        let bare = line.strip_prefix("# ").unwrap_or(line);
        match bare.split_once(" = ") {
            Some((k, v)) if k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') => {
                keys.insert(k.to_string());
                if !v.contains('…') {
                    on.push_str(bare);
                    on.push('\n');
                }
            }
            _ if line.starts_with('[') => {
                on.push_str(line);
                on.push('\n');
            }
            _ => {}
        }
    }
    let cmd = P::command();
    let mut commands = vec![cmd.clone()];
    commands.extend(args.iter().filter_map(|a| cmd.find_subcommand(a).cloned()));
    for c in &commands {
        for a in c.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if !a.is_hide_set() && !["help", "version", "config"].contains(&long) && !keys.contains(long) {
                problems.push(format!("option --{long} of `{}` is not in the example", c.get_name()));
            }
        }
    }
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("p2pfs-example-{}-{n}.toml", std::process::id()));
    if let Err(e) = std::fs::write(&path, on) {
        problems.push(format!("cannot write {}: {e}", path.display()));
        return problems;
    }
    let mut argv: Vec<OsString> = vec![cmd.get_name().into(), "--config".into(), path.clone().into()];
    argv.extend(args.iter().map(OsString::from));
    if let Err(e) = parse_from::<P>(argv, |_| None, "", None) {
        problems.push(format!("the example with every setting on does not parse: {e}"));
    }
    let _ = std::fs::remove_file(&path);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Parser, Debug)]
    struct Daemon {
        #[arg(long, env = "P2PFS_TEST_SETTINGS_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "P2PFS_TEST_SETTINGS_LISTEN", default_value = "127.0.0.1:1")]
        listen: String,
        #[arg(long, default_value_t = 7)]
        repair_interval_ms: u64,
        #[arg(long)]
        verbose: bool,
        #[arg(long = "label")]
        labels: Vec<String>,
    }

    #[derive(Parser, Debug)]
    struct Client {
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[arg(long, global = true)]
        tls_dir: Option<PathBuf>,
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        Mount {
            #[arg(long, default_value = "d")]
            dirsvc: String,
            #[arg(long, default_value_t = 256)]
            cache_mib: u64,
            mountpoint: PathBuf,
        },
        Status {
            #[arg(long, default_value = "d")]
            dirsvc: String,
        },
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn the_file_sets_what_the_command_line_leaves_at_its_default() {
        let f = file(
            "listen = \"127.0.0.1:9\"\nrepair_interval_ms = 50\nverbose = true\nlabel = [\"a\", \"b\"]\n",
        );
        let p = f.path().to_str().unwrap();
        let d: Daemon = parse_from(args(&["d", "--config", p]), no_env, "NONE", None).unwrap();
        assert_eq!(d.listen, "127.0.0.1:9");
        assert_eq!(d.repair_interval_ms, 50);
        assert!(d.verbose);
        assert_eq!(d.labels, ["a", "b"]);
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let f = file("repair-interval-ms = 50\n");
        let p = f.path().to_str().unwrap();
        let d: Daemon =
            parse_from(args(&["d", "--repair-interval-ms", "3", "--config", p]), no_env, "NONE", None)
                .unwrap();
        assert_eq!(d.repair_interval_ms, 3);
    }

    #[test]
    fn the_config_environment_variable_and_default_file_name_the_file() {
        let f = file("repair-interval-ms = 51\n");
        let env = |k: &str| (k == "MY_CONFIG").then(|| f.path().as_os_str().to_owned());
        let d: Daemon = parse_from(args(&["d"]), env, "MY_CONFIG", None).unwrap();
        assert_eq!(d.repair_interval_ms, 51);
        let d: Daemon = parse_from(args(&["d"]), no_env, "MY_CONFIG", Some(f.path().to_owned())).unwrap();
        assert_eq!(d.repair_interval_ms, 51);
        let d: Daemon =
            parse_from(args(&["d"]), no_env, "MY_CONFIG", Some("/nonexistent/x.toml".into())).unwrap();
        assert_eq!(d.repair_interval_ms, 7, "a missing default file is no error");
    }

    #[test]
    fn an_unknown_key_or_a_wrong_value_is_an_error_naming_it() {
        let f = file("repair-intervall-ms = 5\n");
        let p = f.path().to_str().unwrap();
        let e = parse_from::<Daemon>(args(&["d", "--config", p]), no_env, "NONE", None).unwrap_err();
        assert!(e.to_string().contains("repair-intervall-ms"), "{e}");
        let f = file("repair-interval-ms = \"soon\"\n");
        let p = f.path().to_str().unwrap();
        assert!(matches!(
            parse_from::<Daemon>(args(&["d", "--config", p]), no_env, "NONE", None),
            Err(SettingsError::Cli(_))
        ));
        let f = file("verbose = 1\n");
        let p = f.path().to_str().unwrap();
        let e = parse_from::<Daemon>(args(&["d", "--config", p]), no_env, "NONE", None).unwrap_err();
        assert!(e.to_string().contains("verbose: expects true or false"), "{e}");
        let f = file("listen = [\n");
        let p = f.path().to_str().unwrap();
        let e = parse_from::<Daemon>(args(&["d", "--config", p]), no_env, "NONE", None).unwrap_err();
        assert!(matches!(e, SettingsError::Syntax { .. }), "{e}");
    }

    #[test]
    fn subcommand_tables_override_the_top_level_for_their_subcommand_only() {
        let f = file("dirsvc = \"top:1\"\ntls-dir = \"/t\"\n[mount]\ndirsvc = \"m:2\"\ncache-mib = 9\n");
        let p = f.path().to_str().unwrap();
        let c: Client =
            parse_from(args(&["c", "--config", p, "mount", "/mnt"]), no_env, "NONE", None).unwrap();
        assert_eq!(c.tls_dir.as_deref(), Some(Path::new("/t")));
        match c.cmd {
            Cmd::Mount { dirsvc, cache_mib, mountpoint } => {
                assert_eq!((dirsvc.as_str(), cache_mib, mountpoint.as_path()), ("m:2", 9, Path::new("/mnt")))
            }
            other => panic!("{other:?}"),
        }
        let c: Client = parse_from(args(&["c", "--config", p, "status"]), no_env, "NONE", None).unwrap();
        assert!(matches!(c.cmd, Cmd::Status { dirsvc } if dirsvc == "top:1"));
        let f = file("mountpoint = \"/x\"\n");
        let p = f.path().to_str().unwrap();
        let e = parse_from::<Client>(args(&["c", "--config", p, "mount", "/mnt"]), no_env, "NONE", None)
            .unwrap_err();
        assert!(e.to_string().contains("positional"), "{e}");
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let f = file("listen = \"127.0.0.1:9\"\n");
        let p = f.path().to_str().unwrap();
        // The only test that sets this variable (clap reads the process
        // environment itself).
        std::env::set_var("P2PFS_TEST_SETTINGS_LISTEN", "127.0.0.1:8");
        let d: Daemon = parse_from(args(&["d", "--config", p]), no_env, "NONE", None).unwrap();
        std::env::remove_var("P2PFS_TEST_SETTINGS_LISTEN");
        assert_eq!(d.listen, "127.0.0.1:8");
    }
}
