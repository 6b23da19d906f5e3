//! End-to-end tests: the real `dirsvc`, `peerd` and `fs-client` binaries, a
//! real FUSE mount and ordinary tools (`cp -a`, `rsync -a`, `diff -r`,
//! `sha256sum`), including failures injected on purpose: peers, dirsvc and
//! fs-client killed with `kill -9`, peers removed for good, chunk files
//! altered on disk (`chaos`, `kills`, `scrub_repair`, `gc`); POSIX
//! behaviour: pjdfstest and fsx (`posix_suites`), edge cases
//! (`posix_edges`), git, rsync, tar, sqlite and editor saves
//! (`workloads`), two mounts of one volume (`two_mounts`), and keys that
//! are never replaced: `scripts/up.sh`, mount, init and keygen with a
//! missing or wrong identity (`keys`); a directory service that moves
//! chunks and symlink targets, and a removed member (`untrusted_dirsvc`);
//! every metrics endpoint and the status page in headless Chromium
//! (`observability`).
//! Three hosts in network namespaces (etcd, dirsvc, peerd each) riding out
//! a killed leader dirsvc, a cut-off leader host and a dead etcd member
//! during an rsync, a lock held throughout (`failover_hosts`).
//! `fs-client status` and per-file durability through a peer's death and
//! repair (`status_report`).
//!
//! One test binary (see `integration/`); the cluster kit is
//! `testkit::cluster`. The tests need root and
//! `/dev/fuse`; without them they fail with a message saying so. Two
//! clusters run at once (most tests wait on heartbeats and leases); the
//! POSIX suites, chaos and bulk copies run alone (`ClusterOpts::exclusive`).

mod integration {
    mod chaos;
    mod cli_contract;
    mod cli_files;
    mod confidentiality;
    mod copy_tree;
    mod drain;
    mod failover_hosts;
    mod gc;
    mod keys;
    mod kills;
    mod migrate;
    mod multihost;
    mod observability;
    mod peer_faults;
    mod posix_edges;
    mod posix_suites;
    mod scripted;
    mod scrub_repair;
    mod security;
    mod service;
    mod status_report;
    mod told_errors;
    mod tools;
    mod two_mounts;
    mod untrusted_dirsvc;
    mod workloads;
}
