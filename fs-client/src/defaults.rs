//! Where the client finds what no flag names: the state directory that
//! `scripts/up.sh` makes (`$P2PFS_STATE`), else the per-user XDG
//! directories. These are the defaults of every `fs-client` subcommand's
//! options (precedence: flag, then environment, then config file, then
//! these; see `common::settings`).

use std::path::{Path, PathBuf};

/// The dirsvc address used when no flag, environment variable or config
/// file gives one.
pub const FALLBACK_DIRSVC: &str = "127.0.0.1:7700";

/// `$P2PFS_STATE`, if set and not empty.
pub fn state_dir() -> Option<PathBuf> {
    std::env::var_os("P2PFS_STATE").filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// `$XDG_CONFIG_HOME/p2pfs`, else `~/.config/p2pfs`, else `./p2pfs`.
pub fn user_config_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("p2pfs")
}

/// `$XDG_STATE_HOME/p2pfs`, else `~/.local/state/p2pfs`, else
/// `/var/lib/p2pfs`.
pub fn user_state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| Path::new(&h).join(".local/state"))
        })
        .map(|d| d.join("p2pfs"))
        .unwrap_or_else(|| PathBuf::from("/var/lib/p2pfs"))
}

/// The dirsvc address: the first line of `$P2PFS_STATE/run/dirsvc.addr`
/// (the address the running dirsvc bound, written by it) when that file
/// exists, else [`FALLBACK_DIRSVC`].
pub fn dirsvc_addr() -> String {
    state_dir()
        .and_then(|s| std::fs::read_to_string(s.join("run").join("dirsvc.addr")).ok())
        .and_then(|text| text.lines().next().map(|l| l.trim().to_string()))
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| FALLBACK_DIRSVC.to_string())
}

/// The age identity file: `$P2PFS_STATE/identity.txt`, else
/// `identity.txt` in [`user_config_dir`].
pub fn identity_file() -> PathBuf {
    match state_dir() {
        Some(s) => s.join("identity.txt"),
        None => user_config_dir().join("identity.txt"),
    }
}

/// The mountpoint `scripts/up.sh` recorded in `$P2PFS_STATE/mountpoint`,
/// if any.
pub fn mountpoint() -> Option<PathBuf> {
    let text = std::fs::read_to_string(state_dir()?.join("mountpoint")).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| PathBuf::from(line))
}

/// The client's config file when neither `--config` nor
/// `P2PFS_CLIENT_CONFIG` names one (read only if it exists):
/// `$P2PFS_STATE/client.toml`, else `client.toml` in [`user_config_dir`].
pub fn config_file() -> PathBuf {
    match state_dir() {
        Some(s) => s.join("client.toml"),
        None => user_config_dir().join("client.toml"),
    }
}
