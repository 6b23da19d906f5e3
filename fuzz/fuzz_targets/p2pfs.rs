//! The libFuzzer entry point: runs the fuzz target named by the
//! environment variable `P2PFS_FUZZ_TARGET` (see `testkit::fuzz::TARGETS`;
//! `scripts/fuzz.sh` sets it, one target per run and corpus).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn target() -> &'static testkit::fuzz::Target {
    static TARGET: OnceLock<&'static testkit::fuzz::Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let name = std::env::var("P2PFS_FUZZ_TARGET").unwrap_or_default();
        testkit::fuzz::find(&name).unwrap_or_else(|| {
            let names: Vec<&str> = testkit::fuzz::TARGETS.iter().map(|t| t.name).collect();
            eprintln!("set P2PFS_FUZZ_TARGET to one of: {}", names.join(" "));
            std::process::exit(2)
        })
    })
}

fuzz_target!(|data: &[u8]| {
    (target().run)(data);
});
