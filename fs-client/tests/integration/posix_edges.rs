//! The edges of issue 3 that neither pjdfstest nor fsx reach, on a real
//! mount with plain system calls: a sparse file past 4 GiB, a directory of
//! 100,000 entries, names of any bytes, MAP_SHARED writes read through a
//! second mount, and block-aligned `copy_file_range` sharing chunks instead
//! of storing new ones.

use super::tools::{chunk_files, Pattern};
use super::workloads::{pread_all, report};
use std::collections::BTreeSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Instant;
use testkit::cluster::{ClusterOpts, TestCluster};

/// 1 MiB, the volume's block size.
const MIB: u64 = 1 << 20;

/// Entries in the big-directory test.
const BIG_DIR_ENTRIES: usize = 100_000;

/// Threads creating them.
const CREATORS: usize = 4;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Chunk files over all peers of `c`.
fn stored_chunks(c: &TestCluster) -> usize {
    (0..c.peer_count()).map(|i| chunk_files(&c.peer_data_dir(i)).len()).sum()
}

#[test]
fn a_sparse_file_past_4_gib_reads_back_and_stores_only_its_written_blocks() {
    let mut c = TestCluster::start(3, 2);
    c.mount();
    let path = c.mountpoint().join("sparse.img");
    let far = 5 * (1u64 << 30) + 3;
    let f = OpenOptions::new().create_new(true).read(true).write(true).open(&path).expect("create");
    f.write_all_at(b"head", 0).expect("write head");
    f.write_all_at(b"tail", far).expect("write past 4 GiB");
    drop(f);

    let m = fs::metadata(&path).expect("stat");
    assert_eq!(m.len(), far + 4, "size after a write past 4 GiB");
    assert!(m.blocks() * 512 <= 4 * MIB, "only two blocks are stored, st_blocks says {}", m.blocks());
    let f = File::open(&path).expect("open");
    let mut buf = [1u8; 4];
    f.read_exact_at(&mut buf, far).expect("read the tail");
    assert_eq!(&buf, b"tail");
    f.read_exact_at(&mut buf, 1 << 32).expect("read inside the hole");
    assert_eq!(buf, [0; 4], "a hole reads as zeros");
    // SEEK_HOLE / SEEK_DATA see the layout.
    // SAFETY: lseek on an open descriptor.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole as u64, MIB, "the first hole starts after block 0");
    // SAFETY: as above.
    let data = unsafe { libc::lseek(f.as_raw_fd(), MIB as i64, libc::SEEK_DATA) };
    assert_eq!(data as u64, far / MIB * MIB, "the next data is the tail's block");
    drop(f);
    assert!(stored_chunks(&c) <= 4, "2 blocks × R = 2 chunk files, found {}", stored_chunks(&c));

    // Shrink through an open handle to just past 4 GiB; the tail is gone.
    let f = OpenOptions::new().write(true).open(&path).expect("open for write");
    f.set_len((1 << 32) + 1).expect("ftruncate");
    drop(f);
    c.unmount();
    c.mount();
    let f = File::open(&path).expect("open after remount");
    assert_eq!(f.metadata().expect("fstat").len(), (1 << 32) + 1);
    f.read_exact_at(&mut buf, 0).expect("read head");
    assert_eq!(&buf, b"head");
    report("sparse file past 4 GiB", &c);
}

#[test]
fn a_directory_of_100000_entries_lists_every_name_exactly_once() {
    // The subject is listing, not durability: dirsvc's database lives on
    // tmpfs so the 100,000 creates (one fsynced transaction each, ~730/s on
    // this disk) take seconds, not minutes.
    let shm = tempfile::Builder::new().prefix("p2pfs-e2e-db-").tempdir_in("/dev/shm").expect("tmpfs dir");
    let opts = ClusterOpts { dirsvc_db_dir: Some(shm.path().to_path_buf()), ..ClusterOpts::new(3, 2) };
    let mut c = TestCluster::start_with(opts);
    c.mount();
    let dir = c.mountpoint().join("big");
    fs::create_dir(&dir).expect("mkdir");
    let t = Instant::now();
    std::thread::scope(|s| {
        for part in 0..CREATORS {
            let dir = &dir;
            s.spawn(move || {
                for i in (part..BIG_DIR_ENTRIES).step_by(CREATORS) {
                    let p = cstr(&dir.join(format!("entry-{i:06}")));
                    // SAFETY: mknod of a regular file at a valid C path.
                    let r = unsafe { libc::mknod(p.as_ptr(), libc::S_IFREG | 0o644, 0) };
                    assert_eq!(r, 0, "mknod entry {i}: {}", std::io::Error::last_os_error());
                }
            });
        }
    });
    let created = t.elapsed();
    let t = Instant::now();
    let mut seen = BTreeSet::new();
    for e in fs::read_dir(&dir).expect("opendir") {
        let name = e.expect("readdir entry").file_name();
        assert!(seen.insert(name.clone()), "{name:?} listed twice");
    }
    let listed = t.elapsed();
    assert_eq!(seen.len(), BIG_DIR_ENTRIES, "every entry listed");
    let want: BTreeSet<OsString> =
        (0..BIG_DIR_ENTRIES).map(|i| OsString::from(format!("entry-{i:06}"))).collect();
    assert!(seen == want, "the listed names are the created ones");
    assert_eq!(fs::metadata(&dir).expect("stat dir").nlink(), 2, "a directory of files has nlink 2");
    eprintln!(
        "{BIG_DIR_ENTRIES} entries: created in {:.1} s ({:.0}/s), listed in {:.2} s",
        created.as_secs_f64(),
        BIG_DIR_ENTRIES as f64 / created.as_secs_f64(),
        listed.as_secs_f64()
    );
    report("directory of 100,000 entries", &c);
}

#[test]
fn names_are_any_bytes_but_slash_and_nul_up_to_255_and_symlinks_keep_their_own_times() {
    let mut c = TestCluster::start(2, 2);
    c.mount();
    let root = c.mountpoint();
    let odd: Vec<OsString> = vec![
        OsString::from("line\nbreak"),
        OsString::from_vec(vec![0xff, 0xfe, b'x', 0x80]),
        OsString::from("tab\tand space and \u{1F600}"),
        OsString::from("a".repeat(255)),
    ];
    for n in &odd {
        fs::write(root.join(n), n.as_bytes()).unwrap_or_else(|e| panic!("create {n:?}: {e}"));
    }
    let listed: BTreeSet<OsString> =
        fs::read_dir(&root).expect("readdir").map(|e| e.expect("entry").file_name()).collect();
    for n in &odd {
        assert!(listed.contains(n), "{n:?} listed");
        assert_eq!(fs::read(root.join(n)).expect("read back"), n.as_bytes());
    }
    let long = root.join("b".repeat(256));
    let e = fs::write(&long, b"x").expect_err("a 256-byte name");
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}");

    // Symlink targets up to 4095 bytes; lutimes changes the link, not its target.
    let target = "t/".repeat(2047) + "x";
    assert_eq!(target.len(), 4095);
    std::os::unix::fs::symlink(&target, root.join("deep")).expect("symlink of 4095 bytes");
    assert_eq!(fs::read_link(root.join("deep")).expect("readlink").as_os_str(), OsStr::new(&target));
    let e = std::os::unix::fs::symlink("y".repeat(4096), root.join("too-deep")).expect_err("4096 bytes");
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}");
    fs::write(root.join("real"), b"r").expect("target file");
    std::os::unix::fs::symlink("real", root.join("link")).expect("symlink");
    let before = fs::metadata(root.join("real")).expect("stat target").mtime();
    let times = [
        libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 5 },
        libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 7 },
    ];
    let p = cstr(&root.join("link"));
    // SAFETY: valid path and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat NOFOLLOW: {}", std::io::Error::last_os_error());
    let l = fs::symlink_metadata(root.join("link")).expect("lstat");
    assert_eq!((l.mtime(), l.mtime_nsec()), (1_000_000_000, 7), "the link's own mtime");
    assert_eq!(fs::metadata(root.join("real")).expect("stat").mtime(), before, "target untouched");
    // SAFETY: lchown of a valid path to nobody's ids.
    let r = unsafe { libc::lchown(p.as_ptr(), 65534, 65534) };
    assert_eq!(r, 0, "lchown: {}", std::io::Error::last_os_error());
    assert_eq!(fs::symlink_metadata(root.join("link")).expect("lstat").uid(), 65534);
    assert_eq!(fs::metadata(root.join("real")).expect("stat").uid(), 0, "target owner untouched");

    // FIFOs and sockets are nodes like on any disk.
    let fifo = cstr(&root.join("fifo"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let sock = cstr(&root.join("sock"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mknod(sock.as_ptr(), libc::S_IFSOCK | 0o600, 0) }, 0);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(root.join("fifo")).expect("lstat").file_type().is_fifo());
    assert!(fs::symlink_metadata(root.join("sock")).expect("lstat").file_type().is_socket());
    report("odd names, long symlinks, lutimes, nodes", &c);
}

#[test]
fn map_shared_writes_are_read_on_another_mount_after_msync() {
    let mut c = TestCluster::start(3, 2);
    c.mount();
    c.mount_second();
    let path = c.mountpoint().join("mapped.bin");
    let len = 3 * MIB as usize + 12_345;
    let mut want = Pattern::bytes(7, len);
    fs::write(&path, &want).expect("write the file");
    let f = OpenOptions::new().read(true).write(true).open(&path).expect("open rw");
    // SAFETY: mapping a file we opened read-write, `len` bytes, shared.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    // SAFETY: the mapping is `len` bytes long and stays mapped below.
    let bytes = unsafe { std::slice::from_raw_parts_mut(map.cast::<u8>(), len) };
    for off in [0, MIB as usize - 2, 2 * MIB as usize + 100, len - 1] {
        bytes[off] ^= 0x5a;
        want[off] ^= 0x5a;
    }
    // SAFETY: msync and munmap of the mapping made above.
    unsafe {
        assert_eq!(libc::msync(map, len, libc::MS_SYNC), 0, "msync: {}", std::io::Error::last_os_error());
        assert_eq!(libc::munmap(map, len), 0);
    }
    let other = File::open(c.second_mountpoint().join("mapped.bin")).expect("open on the second mount");
    assert!(pread_all(&other) == want, "the second mount reads the mapped writes");
    drop(f);
    report("MAP_SHARED writes across mounts", &c);
}

/// Pages of `len` bytes at `offset` of `f` that are in the page cache.
fn resident_pages(f: &File, offset: usize, len: usize) -> usize {
    let page = 4096;
    // SAFETY: a read-only shared mapping of an open file, unmapped below;
    // mincore reads no byte of it.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            offset + len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let mut vec = vec![0u8; len / page];
        let r = libc::mincore(map.cast::<u8>().add(offset).cast(), len, vec.as_mut_ptr());
        assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
        libc::munmap(map, offset + len);
        vec.iter().filter(|v| **v & 1 == 1).count()
    }
}

#[test]
fn a_random_read_fills_the_page_cache_with_its_whole_segment_and_writes_stay_visible() {
    let mut c = TestCluster::start(3, 2);
    c.mount();
    let path = c.mountpoint().join("random.bin");
    let len = 2 * MIB as usize + 5000;
    let mut want = Pattern::bytes(11, len);
    fs::write(&path, &want).expect("write the file");
    // A cold mount: the kernel has no page of the file.
    c.unmount();
    c.mount();
    let reader = File::open(&path).expect("open read-only");
    // SAFETY: advice on an open descriptor.
    assert_eq!(unsafe { libc::posix_fadvise(reader.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) }, 0);
    let seg = MIB as usize + (64 << 10);
    let mut page = [0u8; 4096];
    reader.read_exact_at(&mut page, (seg + 8192) as u64).expect("a 4 KiB read");
    assert!(page[..] == want[seg + 8192..seg + 8192 + 4096]);
    // The whole 64 KiB segment goes in, in the background; nothing else.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while resident_pages(&reader, seg, 64 << 10) < 16 && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(resident_pages(&reader, seg, 64 << 10), 16, "the read's segment is cached whole");
    assert_eq!(resident_pages(&reader, seg + (192 << 10), 64 << 10), 0, "a segment nobody read is not");
    // The cached pages hold the file's bytes, and a write through another
    // handle is read back through the first.
    assert!(pread_all(&reader) == want, "the file reads back whole");
    let writer = OpenOptions::new().write(true).open(&path).expect("open for writing");
    let patch = Pattern::bytes(12, 300);
    writer.write_all_at(&patch, (seg + 20_000) as u64).expect("write into the cached segment");
    want[seg + 20_000..seg + 20_300].copy_from_slice(&patch);
    assert!(pread_all(&reader) == want, "the write shows through the reader");
    drop(writer);
    drop(reader);
    c.mount_second();
    let other = File::open(c.second_mountpoint().join("random.bin")).expect("open on the second mount");
    assert!(pread_all(&other) == want, "another mount reads the write");
    report("page cache filled by segment", &c);
}

#[test]
fn block_aligned_copy_file_range_shares_chunks_and_the_copies_stay_independent() {
    let mut c = TestCluster::start(3, 2);
    c.mount();
    let src = c.mountpoint().join("original");
    let dst = c.mountpoint().join("copy");
    let data = Pattern::bytes(11, (8 * MIB) as usize);
    fs::write(&src, &data).expect("write original");
    let before = stored_chunks(&c);
    let i = File::open(&src).expect("open source");
    let o = OpenOptions::new().create(true).write(true).truncate(true).open(&dst).expect("create copy");
    let mut copied = 0u64;
    while copied < data.len() as u64 {
        // SAFETY: two open descriptors, null offsets (use the file offsets).
        let n = unsafe {
            libc::copy_file_range(
                i.as_raw_fd(),
                std::ptr::null_mut(),
                o.as_raw_fd(),
                std::ptr::null_mut(),
                data.len() - copied as usize,
                0,
            )
        };
        assert!(n > 0, "copy_file_range: {n} ({})", std::io::Error::last_os_error());
        copied += n as u64;
    }
    drop((i, o));
    assert_eq!(stored_chunks(&c), before, "an aligned copy stores no new chunk");
    assert!(fs::read(&dst).expect("read copy") == data, "the copy has the original's bytes");
    // Changing one does not change the other.
    let f = OpenOptions::new().write(true).open(&dst).expect("open copy");
    f.write_all_at(b"changed", MIB + 5).expect("write the copy");
    drop(f);
    assert!(fs::read(&src).expect("read original") == data, "the original is unchanged");
    fs::remove_file(&src).expect("rm original");
    let got = fs::read(&dst).expect("read copy after rm");
    assert_eq!(&got[MIB as usize + 5..MIB as usize + 12], b"changed");
    assert!(got[..MIB as usize] == data[..MIB as usize], "untouched blocks of the copy survive the original");
    match fs::metadata(&src) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        r => panic!("original should be gone: {r:?}"),
    }
    report("reflinking copy_file_range", &c);
}
