//! Writing the checkpointed pages to disk a little at a time, so that the WAL's flushes do not
//! queue behind them.
//!
//! Measured (README, "Performance"): after a checkpoint has copied WAL pages into the database
//! file, those pages sit dirty in the page cache until the checkpointer's `fdatasync` before a
//! RESTART sends them all to the disk at once: a few thousand scattered 4 KiB writes (each event
//! changes a random leaf in four id-keyed B-trees). A commit's own flush of the WAL that arrives
//! meanwhile waits behind that whole queue; that wait was the fixed-rate p99. Fewer, larger
//! RESTARTs did not help (36 a run against 7, the same p99), nor did starting the writeback of the
//! whole file at once (`SYNC_FILE_RANGE_WRITE` every 20 ms).
//!
//! So after each checkpoint the checkpointer writes the file back in 64 to 256 consecutive ranges
//! (more when the checkpoint copied more, [`chunks_for`]), each one started and waited for before
//! the next (`sync_file_range` with
//! `WAIT_BEFORE | WRITE | WAIT_AFTER`): at most one range's dirty pages are ever queued ahead of
//! a commit's flush, and the `fdatasync` before a RESTART finds little left to write. This is what
//! PostgreSQL's `checkpoint_flush_after` does for its own checkpoints.
//!
//! It decides nothing about durability: `sync_file_range` makes no promise that data survives a
//! crash (it does not flush the disk's cache or the file's metadata), and every guarantee still
//! comes from SQLite's own syncs and the checkpointer's `fdatasync`. Elsewhere than Linux it does
//! nothing.

use std::fs::File;
use std::io;

/// The fewest ranges a pass splits the file into: the file's dirty pages are spread over the
/// whole file, so each range carries about 1/64 of them.
pub const CHUNKS: u64 = 64;
/// The most ranges a pass splits the file into.
pub const MAX_CHUNKS: u64 = 256;
/// How much newly copied WAL one range stands for, between [`CHUNKS`] and [`MAX_CHUNKS`] ranges:
/// a checkpoint that copied more (at saturation, several times what it copies at 3,000 events/s)
/// splits the file into more ranges, so one range's pages queued at the disk stay about as many.
/// Measured, 3 alternating rounds each (README): at saturation 256 ranges gave p99 7.9-8.7 ms
/// against 8.5-10.4 with 64; at 3,000 events/s 64 gave 2.3-2.4 against 2.6-2.9 with 256.
pub const COPIED_PER_CHUNK: u64 = 256 << 10;
/// The smallest range: a small file is written back in ranges of 1 MiB, not 64 tiny ones.
pub const MIN_CHUNK: u64 = 1 << 20;

/// How many ranges to write back in after a checkpoint that copied `copied` bytes of WAL.
pub fn chunks_for(copied: u64) -> u64 {
    (copied / COPIED_PER_CHUNK).clamp(CHUNKS, MAX_CHUNKS)
}

/// The `(offset, length)` ranges that cover a file of `len` bytes in `chunks` pieces, in order:
/// at most `chunks` of them, each at least [`MIN_CHUNK`] long except the last.
pub fn ranges(len: u64, chunks: u64) -> impl Iterator<Item = (u64, u64)> {
    let chunk = len.div_ceil(chunks.max(1)).max(MIN_CHUNK);
    (0..len.div_ceil(chunk)).map(move |i| {
        let start = i * chunk;
        (start, chunk.min(len - start))
    })
}

/// Writes back the dirty pages of `file`, one range at a time, waiting for each, in as many
/// ranges as [`chunks_for`] gives for `copied` bytes of WAL copied since the last pass.
pub fn write_back(file: &File, copied: u64) -> io::Result<()> {
    let len = file.metadata()?.len();
    for (offset, length) in ranges(len, chunks_for(copied)) {
        sys::write_back_range(file, offset, length)?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
mod sys {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    /// Starts writeback of the dirty pages in `offset..offset + length` and waits until it is done.
    // One of the crate's two unsafe places (the other: `store::walbuf`): std, nix and rustix have
    // no wrapper for sync_file_range(2).
    #[allow(unsafe_code)]
    pub fn write_back_range(file: &File, offset: u64, length: u64) -> io::Result<()> {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: the descriptor is open for as long as `file` is borrowed; the call takes plain
        // integers, reads and writes no memory of ours, and its only effect is on the page cache.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, length, flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::fs::File;
    use std::io;

    /// Nothing to do: the checkpointer's `fdatasync` writes everything back.
    pub fn write_back_range(_file: &File, _offset: u64, _length: u64) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TempDir;
    use std::io::Write;

    fn covered(len: u64) -> Vec<(u64, u64)> {
        covered_in(len, CHUNKS)
    }

    fn covered_in(len: u64, chunks: u64) -> Vec<(u64, u64)> {
        let list: Vec<_> = ranges(len, chunks).collect();
        let mut next = 0;
        for &(offset, length) in &list {
            assert_eq!(
                offset, next,
                "ranges of {len} must be consecutive: {list:?}"
            );
            assert!(length > 0, "empty range in {list:?}");
            next = offset + length;
        }
        assert_eq!(
            next, len,
            "ranges of {len} must end at the file's end: {list:?}"
        );
        assert!(
            list.len() as u64 <= chunks,
            "{} ranges for {len}",
            list.len()
        );
        list
    }

    #[test]
    fn ranges_cover_the_file_in_at_most_64_pieces_of_at_least_1_mib() {
        assert!(covered(0).is_empty());
        assert_eq!(covered(1), vec![(0, 1)]);
        assert_eq!(covered(MIN_CHUNK), vec![(0, MIN_CHUNK)]);
        assert_eq!(covered(MIN_CHUNK + 1), vec![(0, MIN_CHUNK), (MIN_CHUNK, 1)]);
        // 10 MiB: ten ranges of the minimum.
        assert_eq!(covered(10 * MIN_CHUNK).len(), 10);
        // 1 GiB and 5 GB: 64 ranges, the chunk grows with the file.
        assert_eq!(covered(1 << 30).len(), 64);
        let big = covered(5_000_000_123);
        assert_eq!(big.len(), 64);
        assert!(big[..63].iter().all(|&(_, l)| l == big[0].1));
        // More ranges when asked for: 256 of a 1 GiB file, still none under 1 MiB.
        assert_eq!(covered_in(1 << 30, MAX_CHUNKS).len(), 256);
        assert_eq!(covered_in(10 * MIN_CHUNK, MAX_CHUNKS).len(), 10);
    }

    #[test]
    fn a_checkpoint_that_copied_more_writes_back_in_more_ranges_up_to_256() {
        assert_eq!(chunks_for(0), CHUNKS);
        assert_eq!(chunks_for(CHUNKS * COPIED_PER_CHUNK), CHUNKS);
        assert_eq!(chunks_for(100 * COPIED_PER_CHUNK + 1), 100);
        assert_eq!(chunks_for(MAX_CHUNKS * COPIED_PER_CHUNK), MAX_CHUNKS);
        assert_eq!(chunks_for(u64::MAX), MAX_CHUNKS);
    }

    #[test]
    fn write_back_succeeds_on_a_file_with_dirty_pages_and_keeps_its_bytes() {
        let dir = TempDir::new("writeback");
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..(3 << 20) / 4096 {
            file.write_all(&block).unwrap();
        }
        write_back(&file, 3 << 20).expect("sync_file_range on a regular file");
        // The checkpointer's descriptor is read-only: writeback works on the file, not the fd.
        file.write_all(&block).unwrap();
        write_back(&File::open(&path).unwrap(), 1 << 30)
            .expect("sync_file_range on a read-only fd");
        let read = std::fs::read(&path).unwrap();
        assert_eq!(read.len(), (3 << 20) + 4096);
        assert!(read.chunks(4096).all(|c| c == block.as_slice()));
        // An empty file has nothing to write back.
        write_back(&File::create(dir.path().join("empty")).unwrap(), 0).unwrap();
    }
}
