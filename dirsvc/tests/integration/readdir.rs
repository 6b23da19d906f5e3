//! Directory listings: paging by cookie over a large directory, stable
//! while entries come and go, and the page-size limits.

use super::support::*;
use common::rpc::dir::{DirError, FileKind};
use common::InodeId;
use dirsvc::store::MAX_READDIR_ENTRIES;
use std::collections::HashSet;

const ENTRIES: usize = 10_000;

#[test]
fn paging_over_ten_thousand_entries_sees_each_once_in_order_while_entries_change() {
    let dir = tmp();
    let s = new_store(dir.path());
    let d = mkdir(&s, ROOT, "big");
    let names: Vec<String> = (0..ENTRIES).map(|i| format!("entry-{i:05}")).collect();
    for name in &names {
        mkfile(&s, d, name);
    }

    // List in pages of 7. After each page, delete one entry not yet seen
    // (it must never show up) and one already seen, and add a new entry
    // (it must show up at the end, after everything older).
    let mut seen: Vec<String> = Vec::new();
    let mut deleted_unseen: HashSet<String> = HashSet::new();
    let mut added: Vec<String> = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = s.readdir(d, after, 7).unwrap();
        pages += 1;
        assert!(page.entries.len() <= 7);
        for e in &page.entries {
            assert!(e.cookie > after, "cookies ascend");
            after = e.cookie;
            assert_eq!(e.kind, FileKind::File);
            seen.push(String::from_utf8(e.name.clone()).unwrap());
        }
        if page.eof {
            break;
        }
        assert!(!page.entries.is_empty(), "a page before eof is never empty");
        // Position (in creation order) of the last entry listed.
        let last_idx: Option<usize> =
            seen.last().and_then(|l| l.strip_prefix("entry-")).map(|i| i.parse().unwrap());
        let victim_idx = last_idx.map_or(ENTRIES, |i| i + 13);
        if pages % 3 == 0 && victim_idx < ENTRIES {
            let victim = &names[victim_idx];
            if !deleted_unseen.contains(victim) {
                s.unlink(d, victim.as_bytes()).unwrap();
                deleted_unseen.insert(victim.clone());
            }
        }
        if pages % 5 == 0 {
            // Already listed (or already gone): removing it must not
            // disturb the listing.
            let old = seen[seen.len() / 2].clone();
            let _ = s.unlink(d, old.as_bytes());
        }
        if pages % 50 == 0 {
            let fresh = format!("added-{pages}");
            mkfile(&s, d, &fresh);
            added.push(fresh);
        }
    }
    let mut expected: Vec<String> = names.iter().filter(|n| !deleted_unseen.contains(*n)).cloned().collect();
    expected.extend(added);
    assert!(deleted_unseen.len() > 100 && pages > 1000);
    assert_eq!(seen.len(), expected.len());
    assert!(seen == expected, "every entry exactly once, in creation order");
}

#[test]
fn page_sizes_are_clamped_and_eof_is_exact() {
    let dir = tmp();
    let s = new_store(dir.path());
    let d = mkdir(&s, ROOT, "d");
    let total = MAX_READDIR_ENTRIES as usize + 10;
    for i in 0..total {
        mkfile(&s, d, &format!("f{i}"));
    }
    let page = s.readdir(d, 0, u32::MAX).unwrap();
    assert_eq!(page.entries.len(), MAX_READDIR_ENTRIES as usize);
    assert!(!page.eof);
    let rest = s.readdir(d, page.entries.last().unwrap().cookie, u32::MAX).unwrap();
    assert_eq!(rest.entries.len(), 10);
    assert!(rest.eof);
    let one = s.readdir(d, 0, 0).unwrap();
    assert_eq!(one.entries.len(), 1, "limit 0 still makes progress");
    // A page that ends exactly at the last entry reports eof.
    let last_two = s.readdir(d, rest.entries[7].cookie, 2).unwrap();
    assert_eq!(last_two.entries.len(), 2);
    assert!(last_two.eof);
    assert!(s.readdir(d, u64::MAX, 10).unwrap().eof);
    let empty = mkdir(&s, ROOT, "empty");
    let page = s.readdir(empty, 0, 10).unwrap();
    assert!(page.entries.is_empty() && page.eof);
    let f = mkfile(&s, ROOT, "f");
    assert_eq!(err(s.readdir(f, 0, 10)), DirError::NotDir);
    assert_eq!(err(s.readdir(InodeId(12345678), 0, 10)), DirError::NotFound);
}
