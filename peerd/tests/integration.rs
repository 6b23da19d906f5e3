//! peerd's integration tests, one binary (see each module for what it pins).

mod integration {
    mod auth;
    mod bad_frames;
    mod binary;
    mod corruption;
    mod fake_dir;
    mod fetch;
    mod heartbeat;
    mod list;
    mod reports;
    mod restart;
    mod scrub;
    mod segments;
    mod suite;
    mod util;
}
