//! Tests of the write buffer: a property test that runs random operation
//! sequences against the buffer (its actions executed by a simulated peer
//! store and dirsvc) and against a plain `Vec<u8>` file, and unit tests of
//! the cases that were hard to get right.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Block size of the tests: small, so sequences cross many blocks.
const B: u64 = 16;
/// Largest offset the tests write or truncate at.
const SPAN: u64 = 8 * B;

/// A simulated peer store (chunks, numbered) and dirsvc (size, layout),
/// with the uploads the buffer handed out and the commit made but not yet
/// answered.
#[derive(Default)]
struct Sim {
    chunks: Vec<Vec<u8>>,
    dir_size: u64,
    dir_layout: BTreeMap<u64, usize>,
    uploads: Vec<Upload>,
}

impl Sim {
    fn store(&mut self, data: &[u8]) -> usize {
        self.chunks.push(data.to_vec());
        self.chunks.len() - 1
    }

    /// dirsvc's `commit_layout`, with its checks; then the invariant that
    /// no committed block is longer than the size allows.
    fn apply(&mut self, c: &Commit<usize>) {
        let n = c.size.div_ceil(B);
        let mut seen = std::collections::HashSet::new();
        for (idx, e) in &c.blocks {
            assert!(seen.insert(*idx), "block {idx} twice in a commit");
            if e.is_some() {
                assert!(*idx < n, "commit of block {idx} past the end of a {}-byte file", c.size);
            }
        }
        for (idx, e) in &c.blocks {
            match e {
                Some(id) => self.dir_layout.insert(*idx, *id),
                None => self.dir_layout.remove(idx),
            };
        }
        self.dir_layout.retain(|i, _| *i < n);
        self.dir_size = c.size;
        for (idx, id) in &self.dir_layout {
            let valid = self.dir_size.saturating_sub(idx * B).min(B) as usize;
            assert!(
                self.chunks[*id].len() <= valid,
                "committed block {idx} holds {} bytes, the size {} allows {valid}",
                self.chunks[*id].len(),
                self.dir_size
            );
        }
    }

    /// The file as dirsvc and the peers have it.
    fn committed_file(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.dir_size as usize];
        for (idx, id) in &self.dir_layout {
            let start = (idx * B) as usize;
            let data = &self.chunks[*id];
            let n = data.len().min(out.len().saturating_sub(start));
            out[start..start + n].copy_from_slice(&data[..n]);
        }
        out
    }

    /// Fills the buffer's fetches from the store.
    fn fill(&self, buf: &mut BlockBuffer<usize>, need: &[Fetch<usize>]) {
        for f in need {
            buf.fill(f.idx, f.stamp(), Arc::new(self.chunks[f.loc].clone()));
        }
    }

    /// Reads `[offset, offset + len)` through the buffer, as `Fs::read`
    /// does: from one stored block's bytes when the plan says they serve
    /// the whole read, else assembled.
    fn read(&self, buf: &BlockBuffer<usize>, offset: u64, len: u64) -> Vec<u8> {
        let mut plan = buf.read(offset, len);
        let fetches: Vec<(u64, usize)> = plan.fetches().to_vec();
        for (idx, id) in fetches {
            if let Some(r) = plan.shared(idx, 0, &self.chunks[id]) {
                return self.chunks[id][r].to_vec();
            }
            plan.fill(idx, &self.chunks[id]);
        }
        plan.into_bytes()
    }

    /// Finishes upload `i` of those handed out: stored, or failed.
    fn finish(&mut self, buf: &mut BlockBuffer<usize>, i: usize, fail: bool) -> Finished {
        let u = self.uploads.swap_remove(i);
        if !buf.upload_started(u.idx, u.gen) {
            // Superseded before it started: skipped, nothing reported.
            return Finished::Superseded;
        }
        if fail {
            return buf.upload_finished(u.idx, u.gen, Err(()));
        }
        assert!(u.data.len() as u64 <= B && !u.data.is_empty());
        let id = self.store(&u.data);
        buf.upload_finished(u.idx, u.gen, Ok(id))
    }

    /// One commit: applied by dirsvc (`ok`) or refused.
    fn commit(&mut self, buf: &mut BlockBuffer<usize>, max: usize, ok: bool) -> bool {
        let Some(c) = buf.commit(max) else { return false };
        if ok {
            self.apply(&c);
            assert!(buf.committed(&c));
        } else {
            buf.commit_failed(&c);
        }
        true
    }
}

/// Runs a buffer operation, fetching what it asks for (at most twice: the
/// simulation changes nothing in between).
fn run<T>(
    sim: &Sim,
    buf: &mut BlockBuffer<usize>,
    mut op: impl FnMut(&mut BlockBuffer<usize>) -> Result<T, Blocked<usize>>,
) -> T {
    for _ in 0..3 {
        match op(buf) {
            Ok(v) => return v,
            Err(Blocked::Fetch(need)) => sim.fill(buf, &need),
            Err(Blocked::TooLarge { end }) => panic!("refused as too large: {end}"),
        }
    }
    panic!("an operation kept asking for fetches")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len];
    }
    (0..len).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8) | 1).collect()
}

/// One step of a random sequence.
#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        size: u64,
    },
    Punch {
        offset: u64,
        len: u64,
    },
    Flush,
    /// Finish up to `n` handed-out uploads, picked by `pick`, failing those
    /// whose bit in `fail` is set.
    Finish {
        n: usize,
        pick: u64,
        fail: u8,
    },
    Commit {
        max: usize,
        ok: bool,
    },
    /// A commit planned, then `op` runs, then the commit lands.
    CommitAround {
        max: usize,
        op: Box<Op>,
    },
    /// A write that must fetch, with `op` running between the fetch and
    /// the retry (the fetched bytes may be stale by then).
    Racing {
        offset: u64,
        len: usize,
        seed: u8,
        op: Box<Op>,
    },
    /// `copy_file_range` sharing a stored chunk (or a hole) as block `idx`.
    Share {
        idx: u64,
        len: u64,
        pick: usize,
    },
    /// dirsvc lost a pending chunk (or it must be sealed again): store it
    /// again from its plaintext.
    Again {
        pick: usize,
    },
    Read {
        offset: u64,
        len: u64,
    },
    /// The periodic commit: the shrink's cut block to an upload, then a
    /// commit.
    Periodic {
        max: usize,
    },
    /// Kept data of an earlier mount applied to block `idx`: bytes, a hole
    /// or a stored chunk.
    SetBlock {
        idx: u64,
        kind: u8,
        seed: u8,
        len: usize,
    },
    /// Close-to-open reload when nothing is pending: what dirsvc has must
    /// then be the file.
    Reload,
}

fn simple_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..SPAN, 1..3 * B as usize, 0..4u8).prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        2 => (0..SPAN).prop_map(|size| Op::Truncate { size }),
        1 => (0..SPAN, 0..3 * B).prop_map(|(offset, len)| Op::Punch { offset, len }),
        1 => Just(Op::Flush),
        3 => (1..4usize, any::<u64>(), any::<u8>()).prop_map(|(n, pick, fail)| Op::Finish { n, pick, fail }),
        2 => (1..4usize, prop::bool::weighted(0.8)).prop_map(|(max, ok)| Op::Commit { max, ok }),
        1 => (0..6u64, 1..=B, any::<usize>()).prop_map(|(idx, len, pick)| Op::Share { idx, len, pick }),
        1 => any::<usize>().prop_map(|pick| Op::Again { pick }),
        1 => (0..SPAN, 0..3 * B).prop_map(|(offset, len)| Op::Read { offset, len }),
        1 => (1..4usize).prop_map(|max| Op::Periodic { max }),
        1 => (0..8u64, 0..3u8, 0..4u8, 0..=B as usize)
            .prop_map(|(idx, kind, seed, len)| Op::SetBlock { idx, kind, seed, len }),
        1 => Just(Op::Reload),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => simple_op(),
        1 => (1..4usize, simple_op()).prop_map(|(max, op)| Op::CommitAround { max, op: Box::new(op) }),
        1 => (0..SPAN, 1..3 * B as usize, 1..4u8, simple_op())
            .prop_map(|(offset, len, seed, op)| Op::Racing { offset, len, seed, op: Box::new(op) }),
    ]
}

/// The reference: a plain file.
fn model_write(model: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[offset as usize..end].copy_from_slice(data);
}

/// Applies `op` to the buffer (through the simulation) and to the model.
fn step(sim: &mut Sim, buf: &mut BlockBuffer<usize>, model: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, len, seed } => {
            let data = pattern(*len, *seed);
            let ups = run(sim, buf, |b| b.write(*offset, &data));
            sim.uploads.extend(ups);
            model_write(model, *offset, &data);
        }
        Op::Truncate { size } => {
            let ups = run(sim, buf, |b| b.truncate(*size));
            sim.uploads.extend(ups);
            model.resize(*size as usize, 0);
        }
        Op::Punch { offset, len } => {
            let ups = run(sim, buf, |b| b.punch(*offset, *len));
            sim.uploads.extend(ups);
            let end = (offset + len).min(model.len() as u64);
            if *offset < end {
                model[*offset as usize..end as usize].fill(0);
            }
        }
        Op::Flush => {
            let ups = buf.flush();
            sim.uploads.extend(ups);
        }
        Op::Finish { n, pick, fail } => {
            let mut pick = *pick;
            for k in 0..*n {
                if sim.uploads.is_empty() {
                    break;
                }
                let i = (pick % sim.uploads.len() as u64) as usize;
                pick /= 7;
                sim.finish(buf, i, fail & (1 << k) != 0);
            }
        }
        Op::Commit { max, ok } => {
            sim.commit(buf, *max, *ok);
        }
        Op::CommitAround { max, op } => {
            let c = buf.commit(*max);
            step(sim, buf, model, op);
            if let Some(c) = c {
                sim.apply(&c);
                assert!(buf.committed(&c));
            }
        }
        Op::Racing { offset, len, seed, op } => {
            let data = pattern(*len, *seed);
            match buf.write(*offset, &data) {
                Ok(ups) => sim.uploads.extend(ups),
                Err(Blocked::Fetch(need)) => {
                    step(sim, buf, model, op);
                    sim.fill(buf, &need);
                    let ups = run(sim, buf, |b| b.write(*offset, &data));
                    sim.uploads.extend(ups);
                }
                Err(e) => panic!("{e:?}"),
            }
            model_write(model, *offset, &data);
        }
        Op::Share { idx, len, pick } => {
            let loc = if sim.chunks.is_empty() || pick % 4 == 0 {
                None
            } else {
                let id = pick % sim.chunks.len();
                (sim.chunks[id].len() as u64 <= *len).then_some(id)
            };
            if pick % 4 != 0 && loc.is_none() {
                return;
            }
            if buf.share(*idx, loc, *len) {
                let start = (idx * B) as usize;
                let end = start + *len as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[start..end].fill(0);
                if let Some(id) = loc {
                    let d = &sim.chunks[id];
                    model[start..start + d.len()].copy_from_slice(d);
                }
            }
        }
        Op::Again { pick } => {
            let pending: Vec<(u64, u64, usize)> =
                buf.stored_pending().into_iter().map(|(i, g, l)| (i, g, *l)).collect();
            if pending.is_empty() {
                return;
            }
            let (idx, gen, id) = pending[pick % pending.len()];
            let data = Arc::new(sim.chunks[id].clone());
            let ups = buf.again(idx, gen, data);
            sim.uploads.extend(ups);
        }
        Op::Periodic { max } => {
            let ups = buf.upload_cut();
            sim.uploads.extend(ups);
            sim.commit(buf, *max, true);
        }
        Op::SetBlock { idx, kind, seed, len } => {
            let start = (idx * B) as usize;
            let valid = model.len().saturating_sub(start).min(B as usize);
            let (content, bytes) = match kind {
                0 => (Content::Hole, Vec::new()),
                1 => {
                    let d = pattern(*len, *seed);
                    (Content::Data(Arc::new(d.clone())), d)
                }
                _ => {
                    // A chunk kept by an earlier mount fits the size.
                    let d = pattern((*len).min(valid).max(1), seed | 1);
                    (Content::Stored(sim.store(&d)), d)
                }
            };
            let ups = buf.set_block(*idx, content);
            sim.uploads.extend(ups);
            if valid > 0 {
                model[start..start + valid].fill(0);
                let n = bytes.len().min(valid);
                model[start..start + n].copy_from_slice(&bytes[..n]);
            }
        }
        Op::Reload => {
            if !buf.has_local_changes() {
                assert_eq!(sim.committed_file(), *model, "a clean buffer, but dirsvc differs");
                assert!(buf.reset(sim.dir_size, sim.dir_layout.clone()));
            }
        }
        Op::Read { offset, len } => {
            let got = sim.read(buf, *offset, *len);
            let end = (offset + len).min(model.len() as u64);
            let want = if *offset < end { &model[*offset as usize..end as usize] } else { &[][..] };
            assert_eq!(got, want, "read of {len} bytes at {offset}");
        }
    }
}

/// Flushes, finishes every upload and commits until nothing is left.
fn settle_all(sim: &mut Sim, buf: &mut BlockBuffer<usize>) {
    for _ in 0..20 {
        let ups = buf.flush();
        sim.uploads.extend(ups);
        while !sim.uploads.is_empty() {
            sim.finish(buf, 0, false);
        }
        assert!(!buf.uploads_pending());
        let mut commits = 0;
        while sim.commit(buf, 3, true) {
            commits += 1;
            assert!(commits < 100, "commits never end");
        }
        if !buf.has_local_changes() {
            return;
        }
    }
    panic!("the buffer does not become clean");
}

fn check(sim: &Sim, buf: &BlockBuffer<usize>, model: &[u8]) {
    buf.check_invariants();
    assert_eq!(buf.size(), model.len() as u64, "size");
    assert_eq!(sim.read(buf, 0, buf.size() + 5), model, "the whole file");
}

/// Runs `ops` from an empty file (or `initial` committed), checking the
/// buffer against the model after every step, then settles everything
/// and checks what dirsvc has and what a fresh buffer loaded from it reads.
fn scenario(initial: &[u8], ops: &[Op], max_dirty: usize) {
    let mut sim = Sim::default();
    let mut layout = Vec::new();
    for (i, piece) in initial.chunks(B as usize).enumerate() {
        if piece.iter().any(|b| *b != 0) {
            layout.push((i as u64, sim.store(piece)));
        }
    }
    sim.dir_layout = layout.iter().copied().collect();
    sim.dir_size = initial.len() as u64;
    let mut buf = BlockBuffer::new(B, max_dirty, initial.len() as u64, layout);
    let mut model = initial.to_vec();
    check(&sim, &buf, &model);
    for op in ops {
        step(&mut sim, &mut buf, &mut model, op);
        check(&sim, &buf, &model);
    }
    settle_all(&mut sim, &mut buf);
    check(&sim, &buf, &model);
    assert_eq!(sim.committed_file(), model, "what dirsvc has");
    let fresh = BlockBuffer::new(B, max_dirty, sim.dir_size, sim.dir_layout.clone());
    assert_eq!(sim.read(&fresh, 0, sim.dir_size), model, "a fresh buffer over what dirsvc has");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn the_buffer_reads_and_commits_what_a_plain_file_holds(
        initial in prop::collection::vec(0..3u8, 0..(4 * B) as usize),
        ops in prop::collection::vec(op(), 1..40),
        max_dirty in 0..4usize,
    ) {
        scenario(&initial, &ops, max_dirty);
    }
}

// ----- unit tests of the tricky cases ---------------------------------------------

fn committed_file_of(data: &[u8]) -> (Sim, BlockBuffer<usize>) {
    let mut sim = Sim::default();
    let layout: Vec<(u64, usize)> =
        data.chunks(B as usize).enumerate().map(|(i, p)| (i as u64, sim.store(p))).collect();
    sim.dir_layout = layout.iter().copied().collect();
    sim.dir_size = data.len() as u64;
    let buf = BlockBuffer::new(B, 8, data.len() as u64, layout);
    (sim, buf)
}

/// A read inside one stored block is served from that block's bytes (no
/// copy); one that also covers local bytes, another block or a hole, or
/// runs past what the block holds, is assembled.
#[test]
fn a_read_inside_one_stored_block_shares_it() {
    let data = pattern(2 * B as usize + 5, 9);
    let (sim, mut buf) = committed_file_of(&data);
    let block = |i: usize| &sim.chunks[i];
    let plan = buf.read(3, 10);
    assert_eq!(plan.shared(0, 0, block(0)), Some(3..13));
    // A segment's bytes: the block from byte 2 on.
    assert_eq!(plan.shared(0, 2, &block(0)[2..]), Some(1..11));
    assert_eq!(plan.shared(0, 4, &block(0)[4..]), None, "starts after the read");
    assert_eq!(plan.shared(0, 0, &block(0)[..12]), None, "ends before the read's end");
    assert_eq!(buf.read(10, 10).shared(0, 0, block(0)), None, "two blocks");
    assert_eq!(buf.read(B, B).shared(1, 0, block(1)), Some(0..B as usize));
    // Local bytes in the read: assembled.
    if let Err(Blocked::Fetch(need)) = buf.write(B + 1, b"xy") {
        sim.fill(&mut buf, &need);
        buf.write(B + 1, b"xy").unwrap();
    }
    assert_eq!(buf.read(B, 4).shared(1, 0, block(1)), None);
    let mut want = data.clone();
    want[B as usize + 1..B as usize + 3].copy_from_slice(b"xy");
    assert_eq!(sim.read(&buf, 0, 2 * B + 5), want);
}

/// Truncating down into a stored block and up again reads zeros, locally
/// and from what is committed.
#[test]
fn truncate_down_then_up_reads_zeros() {
    let data = pattern(2 * B as usize, 5);
    let (mut sim, mut buf) = committed_file_of(&data);
    let Err(Blocked::Fetch(need)) = buf.truncate(B + 3) else { panic!("the cut block must be fetched") };
    assert_eq!(need.iter().map(|f| f.idx).collect::<Vec<_>>(), vec![1]);
    sim.fill(&mut buf, &need);
    buf.truncate(B + 3).unwrap();
    buf.truncate(2 * B).unwrap();
    let mut want = data.clone();
    want[(B + 3) as usize..].fill(0);
    assert_eq!(sim.read(&buf, 0, 2 * B), want);
    settle_all(&mut sim, &mut buf);
    assert_eq!(sim.committed_file(), want);
}

/// The existing write path's bug: a shrink committed (by the periodic
/// commit, or after the cut block's upload failed) without the trimmed cut
/// block left dirsvc with a block longer than the size, and a later grow
/// showed the truncated bytes again. Here the shrink commit waits for the
/// cut block, and nothing else is committed before it.
#[test]
fn a_shrink_is_never_committed_without_its_cut_block() {
    let data = pattern(2 * B as usize, 5);
    let (mut sim, mut buf) = committed_file_of(&data);
    run(&sim, &mut buf, |b| b.truncate(B + 3));
    // The periodic commit: nothing may go while the cut block is dirty.
    assert!(buf.commit(10).is_none());
    // Its upload fails: still nothing.
    sim.uploads.extend(buf.flush());
    assert_eq!(sim.uploads.len(), 1);
    assert_eq!(sim.finish(&mut buf, 0, true), Finished::Failed);
    assert!(buf.commit(10).is_none());
    assert!(buf.has_dirty());
    // Stored: the shrink commit carries it with the size.
    sim.uploads.extend(buf.flush());
    assert_eq!(sim.finish(&mut buf, 0, false), Finished::Stored);
    let c = buf.commit(10).unwrap();
    assert!(c.is_shrink());
    assert_eq!(c.size, B + 3);
    assert_eq!(c.blocks.len(), 1);
    assert_eq!(c.blocks[0].0, 1);
    sim.apply(&c);
    assert!(buf.committed(&c));
    assert!(!buf.has_local_changes());
    // Another client grows the file: zeros.
    let mut want = data[..(B + 3) as usize].to_vec();
    want.resize(2 * B as usize, 0);
    sim.dir_size = 2 * B;
    assert_eq!(sim.committed_file(), want);
}

/// A shrink then a write into the cut block before any commit: the shrink
/// commit stores the block as the truncate left it, and the newer content
/// follows in a later commit.
#[test]
fn a_write_into_the_cut_block_after_a_shrink_keeps_the_shrink_commit_exact() {
    let data = pattern(3 * B as usize, 9);
    let (mut sim, mut buf) = committed_file_of(&data);
    run(&sim, &mut buf, |b| b.truncate(B + 4));
    // The trimmed block goes to an upload, then a write supersedes it.
    sim.uploads.extend(buf.flush());
    let ups = run(&sim, &mut buf, |b| b.write(B + 10, b"xyz"));
    sim.uploads.extend(ups);
    let mut want = data[..(B + 4) as usize].to_vec();
    want.resize((B + 10) as usize, 0);
    want.extend_from_slice(b"xyz");
    assert_eq!(sim.read(&buf, 0, 100), want);
    // The trimmed version's upload is still wanted (by the shrink commit).
    assert_eq!(sim.finish(&mut buf, 0, false), Finished::Stored);
    // The shrink goes with the size since (nothing of the old block past
    // the cut can show): the cut block as the truncate left it.
    let c = buf.commit(10).unwrap();
    assert!(c.is_shrink());
    sim.apply(&c);
    buf.committed(&c);
    let mut first = data[..(B + 4) as usize].to_vec();
    first.resize(c.size as usize, 0);
    assert_eq!(sim.committed_file(), first);
    settle_all(&mut sim, &mut buf);
    assert_eq!(sim.committed_file(), want);
}

/// An upload overtaken by a newer write does not overwrite it, whatever
/// order the results come in.
#[test]
fn an_old_upload_never_overwrites_a_newer_write() {
    let (mut sim, mut buf) = committed_file_of(&[]);
    let first = buf.write(0, &pattern(B as usize, 1)).unwrap();
    assert_eq!(first.len(), 1, "a full block is uploaded at once");
    let second = buf.write(0, &pattern(B as usize, 2)).unwrap();
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].gen, second[0].gen);
    sim.uploads.extend(second);
    sim.uploads.extend(first);
    // The old one finishes last, successfully.
    assert_eq!(sim.finish(&mut buf, 0, false), Finished::Stored);
    let old = sim.uploads.pop().unwrap();
    assert!(!buf.upload_started(old.idx, old.gen));
    assert_eq!(buf.upload_finished(old.idx, old.gen, Ok(sim.store(&old.data))), Finished::Superseded);
    assert_eq!(sim.read(&buf, 0, B), pattern(B as usize, 2));
    settle_all(&mut sim, &mut buf);
    assert_eq!(sim.committed_file(), pattern(B as usize, 2));
}

/// A failed upload keeps the data dirty; a write meanwhile makes the
/// failure moot.
#[test]
fn a_failed_upload_keeps_the_data_and_a_newer_write_wins() {
    let (mut sim, mut buf) = committed_file_of(&[]);
    sim.uploads.extend(buf.write(0, &pattern(B as usize, 1)).unwrap());
    assert_eq!(sim.finish(&mut buf, 0, true), Finished::Failed);
    assert!(buf.has_dirty());
    assert!(buf.commit(10).is_some_and(|c| c.blocks.is_empty()), "only the size");
    sim.uploads.extend(buf.write(2, b"ab").unwrap());
    let mut want = pattern(B as usize, 1);
    want[2..4].copy_from_slice(b"ab");
    assert_eq!(sim.read(&buf, 0, B), want);
}

/// The existing write path's bug: storing a pending chunk again (dirsvc
/// collected it, or its key epoch is stale) put the old plaintext over a
/// newer buffered write of the same block. Here the newer write wins.
#[test]
fn storing_a_pending_chunk_again_keeps_a_newer_write() {
    let (mut sim, mut buf) = committed_file_of(&[]);
    sim.uploads.extend(buf.write(0, &pattern(B as usize, 1)).unwrap());
    assert_eq!(sim.finish(&mut buf, 0, false), Finished::Stored);
    let ups = run(&sim, &mut buf, |b| b.write(3, b"new"));
    assert!(ups.is_empty());
    let (idx, gen, id) = buf.stored_pending().into_iter().map(|(i, g, l)| (i, g, *l)).next().unwrap();
    let again = buf.again(idx, gen, Arc::new(sim.chunks[id].clone()));
    assert!(again.is_empty(), "the newer local block replaces it anyway");
    let mut want = pattern(B as usize, 1);
    want[3..6].copy_from_slice(b"new");
    assert_eq!(sim.read(&buf, 0, B), want);
    // The stale chunk is not committed.
    let c = buf.commit(10).unwrap();
    assert!(c.blocks.is_empty(), "{:?}", c.blocks);
    buf.commit_failed(&c);
    settle_all(&mut sim, &mut buf);
    assert_eq!(sim.committed_file(), want);
}

/// A fill for a block that changed after the fetch was asked for is
/// ignored: the operation asks again.
#[test]
fn a_stale_fill_is_refused() {
    let data = pattern(2 * B as usize, 3);
    let (mut sim, mut buf) = committed_file_of(&data);
    let Err(Blocked::Fetch(need)) = buf.write(B + 2, b"zz") else { panic!() };
    // Meanwhile the block is shared from another chunk.
    let other = sim.store(&pattern(B as usize, 7));
    assert!(buf.share(1, Some(other), B));
    sim.fill(&mut buf, &need);
    let Err(Blocked::Fetch(again)) = buf.write(B + 2, b"zz") else { panic!("a stale fill was used") };
    assert_eq!(again[0].loc, other);
    sim.fill(&mut buf, &again);
    buf.write(B + 2, b"zz").unwrap();
    let mut want = data[..B as usize].to_vec();
    want.extend(pattern(B as usize, 7));
    want[(B + 2) as usize..(B + 4) as usize].copy_from_slice(b"zz");
    assert_eq!(sim.read(&buf, 0, 2 * B), want);
}

/// Punching whole blocks makes holes without fetching; the edges are
/// fetched and zeroed; a punched block of zeros is committed as a hole.
#[test]
fn punch_makes_holes_and_rewrites_the_edges() {
    let data = pattern(4 * B as usize, 4);
    let (mut sim, mut buf) = committed_file_of(&data);
    let Err(Blocked::Fetch(need)) = buf.punch(B + 8, 2 * B) else { panic!() };
    assert_eq!(need.iter().map(|f| f.idx).collect::<Vec<_>>(), vec![1, 3]);
    assert!(buf.punch(2 * B, B).unwrap().is_empty(), "a whole block needs nothing");
    sim.fill(&mut buf, &need);
    buf.punch(B + 8, 2 * B).unwrap();
    let mut want = data.clone();
    want[(B + 8) as usize..(3 * B + 8) as usize].fill(0);
    assert_eq!(sim.read(&buf, 0, 4 * B), want);
    settle_all(&mut sim, &mut buf);
    assert_eq!(sim.committed_file(), want);
    assert!(!sim.dir_layout.contains_key(&2));
}

/// Bytes past the size are never returned, and a write past the end reads
/// zeros in the gap.
#[test]
fn reads_stop_at_the_size_and_gaps_are_zeros() {
    let (sim, mut buf) = committed_file_of(&[]);
    buf.write(3 * B + 1, b"x").unwrap();
    assert_eq!(buf.size(), 3 * B + 2);
    let got = sim.read(&buf, 0, 1000);
    assert_eq!(got.len() as u64, 3 * B + 2);
    assert!(got[..(3 * B + 1) as usize].iter().all(|b| *b == 0));
    assert!(sim.read(&buf, 3 * B + 2, 10).is_empty());
    assert!(sim.read(&buf, u64::MAX, 10).is_empty());
}

/// Bad input is refused, never a panic: writes and sizes past the largest
/// file, shares that overflow, empty writes change nothing.
#[test]
fn bad_input_is_refused_without_a_panic() {
    let (_sim, mut buf) = committed_file_of(&[]);
    assert!(matches!(buf.write(MAX_FILE_SIZE, b"x"), Err(Blocked::TooLarge { .. })));
    assert!(matches!(buf.write(u64::MAX, b"x"), Err(Blocked::TooLarge { .. })));
    assert!(matches!(buf.truncate(u64::MAX), Err(Blocked::TooLarge { .. })));
    assert!(buf.write(100, b"").unwrap().is_empty());
    assert_eq!(buf.size(), 0, "an empty write does not grow the file");
    assert!(!buf.has_local_changes());
    assert!(!buf.share(u64::MAX, None, B));
    assert!(!buf.share(0, None, 0));
    assert!(!buf.share(0, None, B + 1));
    assert!(buf.punch(u64::MAX, u64::MAX).unwrap().is_empty());
    // A block size of 0 counts as 1.
    let mut zero = BlockBuffer::<usize>::new(0, 0, 0, Vec::new());
    let ups = zero.write(0, b"ab").unwrap();
    assert_eq!(ups.iter().map(|u| (u.idx, u.data.len())).collect::<Vec<_>>(), vec![(0, 1), (1, 1)]);
}

/// Dirty blocks past the limit go to uploads, lowest first; blocks of
/// zeros become holes instead of uploads.
#[test]
fn dirty_overflow_uploads_the_lowest_and_zero_blocks_are_holes() {
    let mut buf = BlockBuffer::<usize>::new(B, 2, 0, Vec::new());
    assert!(buf.write(2 * B, b"c").unwrap().is_empty());
    assert!(buf.write(0, b"a").unwrap().is_empty());
    let ups = buf.write(B, b"b").unwrap();
    assert_eq!(ups.iter().map(|u| u.idx).collect::<Vec<_>>(), vec![0]);
    assert!(buf.write(3 * B, &[0; B as usize]).unwrap().is_empty(), "a zero block is not uploaded");
    assert!(!buf.is_local(3));
}

/// A shrink below what dirsvc has, with an empty cut block and many
/// blocks past it, costs one commit, not one entry per dropped block.
#[test]
fn a_shrink_to_zero_is_one_small_commit() {
    let data = pattern(8 * B as usize, 2);
    let (mut sim, mut buf) = committed_file_of(&data);
    buf.truncate(0).unwrap();
    let c = buf.commit(2).unwrap();
    assert!(c.is_shrink() && c.size == 0 && c.blocks.is_empty());
    sim.apply(&c);
    buf.committed(&c);
    assert!(!buf.has_local_changes());
    assert!(sim.committed_file().is_empty());
}

/// A truncate while a commit is in flight that grows the file: the commit
/// lands after the truncate, and the shrink still follows it.
#[test]
fn a_truncate_during_a_commit_that_grows_the_file_still_shrinks() {
    let (mut sim, mut buf) = committed_file_of(&[]);
    sim.uploads.extend(buf.write(0, &pattern(3 * B as usize, 6)).unwrap());
    while !sim.uploads.is_empty() {
        sim.finish(&mut buf, 0, false);
    }
    let c = buf.commit(10).unwrap();
    assert_eq!(c.size, 3 * B);
    run(&sim, &mut buf, |b| b.truncate(5));
    sim.apply(&c);
    buf.committed(&c);
    settle_all(&mut sim, &mut buf);
    assert_eq!(sim.committed_file(), pattern(3 * B as usize, 6)[..5]);
}

/// Found by the model: a block punched to a hole while the shrink commit
/// still had to store it (trimmed) must be committed as a hole afterwards,
/// though no stored entry of it was known here.
#[test]
fn a_hole_punched_in_a_cut_block_follows_the_shrink_commit() {
    let (mut sim, mut buf) = committed_file_of(&[]);
    sim.uploads.extend(buf.write(0, &pattern(2 * B as usize, 4)).unwrap());
    sim.commit(&mut buf, 10, true);
    assert_eq!(sim.dir_size, 2 * B, "the size is committed, no block yet");
    run(&sim, &mut buf, |b| b.truncate(B + 1));
    run(&sim, &mut buf, |b| b.punch(B, 1));
    settle_all(&mut sim, &mut buf);
    let mut want = pattern(B as usize, 4);
    want.push(0);
    assert_eq!(sim.committed_file(), want);
}

/// Found by the model: once the shrink commit stored the cut block as the
/// truncate left it, a later hole there must be committed too, although a
/// newer local version of the block was what this client read.
#[test]
fn a_hole_after_the_shrink_commit_replaces_its_cut_block() {
    let (mut sim, mut buf) = committed_file_of(&[]);
    sim.uploads.extend(buf.write(0, &pattern(2 * B as usize, 4)).unwrap());
    sim.commit(&mut buf, 10, true);
    run(&sim, &mut buf, |b| b.truncate(B + 1));
    sim.uploads.extend(buf.flush());
    sim.uploads.extend(buf.write(B, b"z").unwrap());
    while !sim.uploads.is_empty() {
        sim.finish(&mut buf, sim.uploads.len() - 1, false);
    }
    let c = buf.commit(10).unwrap();
    assert!(c.is_shrink());
    sim.apply(&c);
    buf.committed(&c);
    run(&sim, &mut buf, |b| b.punch(B, 1));
    settle_all(&mut sim, &mut buf);
    let mut want = pattern(B as usize, 4);
    want.push(0);
    assert_eq!(sim.committed_file(), want);
}

/// Found by the model: a block set whole to fewer bytes than its pending
/// stored version, then cut by a truncate: the longer pending version must
/// not be committed under the smaller size.
#[test]
fn a_longer_pending_version_of_the_cut_block_is_never_committed() {
    let (mut sim, mut buf) = committed_file_of(&[]);
    sim.uploads.extend(buf.write(0, &pattern(3 * B as usize, 6)).unwrap());
    while !sim.uploads.is_empty() {
        sim.finish(&mut buf, 0, false);
    }
    sim.uploads.extend(buf.set_block(2, Content::Data(Arc::new(Vec::new()))));
    run(&sim, &mut buf, |b| b.truncate(2 * B + 1));
    // A periodic commit before the next flush (dirsvc checks the sizes).
    assert!(sim.commit(&mut buf, 10, true));
    settle_all(&mut sim, &mut buf);
    let mut want = pattern(2 * B as usize, 6);
    want.push(0);
    assert_eq!(sim.committed_file(), want);
}

/// A file truncated to zero and written again (`O_TRUNC` then writes)
/// commits once: every block up to the new end has an entry, so nothing of
/// the old content can show. With a block left out, the shrink goes alone
/// first.
#[test]
fn a_file_written_again_after_o_trunc_commits_once() {
    let (mut sim, mut buf) = committed_file_of(&pattern(4 * B as usize, 1));
    buf.truncate(0).unwrap();
    sim.uploads.extend(buf.write(0, &pattern(2 * B as usize + 3, 2)).unwrap());
    sim.uploads.extend(buf.flush());
    while !sim.uploads.is_empty() {
        sim.finish(&mut buf, 0, false);
    }
    let c = buf.commit(10).unwrap();
    assert!(c.is_shrink() && c.size == 2 * B + 3 && c.blocks.len() == 3, "{c:?}");
    sim.apply(&c);
    buf.committed(&c);
    assert!(buf.commit(10).is_none() && !buf.has_local_changes());
    assert_eq!(sim.committed_file(), pattern(2 * B as usize + 3, 2));

    let (mut sim, mut buf) = committed_file_of(&pattern(4 * B as usize, 1));
    buf.truncate(0).unwrap();
    sim.uploads.extend(buf.write(B, &pattern(B as usize, 2)).unwrap());
    sim.uploads.extend(buf.flush());
    while !sim.uploads.is_empty() {
        sim.finish(&mut buf, 0, false);
    }
    let c = buf.commit(10).unwrap();
    assert!(c.is_shrink() && c.size == 0, "block 0 has no entry: the shrink goes alone");
    sim.apply(&c);
    buf.committed(&c);
    settle_all(&mut sim, &mut buf);
    let mut want = vec![0; B as usize];
    want.extend(pattern(B as usize, 2));
    assert_eq!(sim.committed_file(), want);
}
