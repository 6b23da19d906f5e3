//! Writes every fuzz target's seeds into a corpus directory, one folder per
//! target (`DIR/<target>/seed-<n>`), for cargo-fuzz; with `--list`, prints
//! the target names, one per line. Used by `scripts/fuzz.sh`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args().nth(1).ok_or("usage: fuzz-seeds --list | CORPUS_DIR")?;
    if arg == "--list" {
        for t in testkit::fuzz::TARGETS {
            println!("{}", t.name);
        }
        return Ok(());
    }
    let root = PathBuf::from(arg);
    for t in testkit::fuzz::TARGETS {
        let dir = root.join(t.name);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in (t.seeds)().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
    }
    Ok(())
}
