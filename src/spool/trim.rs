//! Read-only mappings of large spool and outbox files whose touched pages
//! are handed back while they are read.
//!
//! The reception and delivery points parse a message as one slice (the
//! zero-copy reader needs it whole); for a message on disk that slice is
//! the file mapped read-only. Every page a pass touches stays mapped, so
//! a 100 MB message used to put 100 MB of the page cache into the
//! process's RSS (VmHWM 127 MB at the reception point) although the heap
//! held 9 MB.
//!
//! Here a mapping of [`TRIM_MIN`] bytes or more is registered with one
//! background thread (`pec-trim`) that every [`TRIM_EVERY`] unmaps the
//! pages of every registered mapping from this process
//! (`madvise(MADV_DONTNEED)`). The file's pages stay in the page cache; a
//! later read of a trimmed page maps it again from there (a minor fault,
//! the same bytes: the files are never written once mapped). So the RSS a
//! large message adds is what a pass touches in one period, not the
//! message; the passes are sequential scans (boundaries, digests, copies
//! into the mailbox), re-touching little.
//!
//! Why a timer and not "drop behind the pass": the passes are the PEC
//! rules' pure functions over `&[u8]`; they do not know where their bytes
//! live and should not.
//!
//! The thread holds a strong reference only while it advises: a view
//! dropped meanwhile is unmapped by whichever side lets go last, never
//! under the thread's feet.

use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

/// Mappings at least this large are trimmed.
pub const TRIM_MIN: usize = 8 << 20;

/// How often the pages of a registered mapping are handed back.
///
/// The passes read a mapping at a few GB/s: at 2 ms the pages touched in
/// one period are 10-20 MB (measured: 100 MiB at the reception point,
/// VmHWM 26-37 MB; 5 ms: 34-43 MB; 20 ms: 75-89 MB; `BENCHMARKS.md`).
pub const TRIM_EVERY: Duration = Duration::from_millis(2);

/// A file mapped read-only, its pages handed back in the background when
/// it is large. Dereferences to the file's bytes.
pub struct Mapped {
    map: Arc<memmap2::Mmap>,
}

impl Mapped {
    /// Map the first `len` bytes of `file` read-only (`len` > 0).
    ///
    /// # Safety
    /// The caller guarantees that nobody writes or truncates the file
    /// while the mapping lives (what makes reading a file mapping as a
    /// slice sound), which also makes handing its pages back harmless.
    pub unsafe fn new(file: &File, len: usize) -> io::Result<Mapped> {
        // SAFETY: the caller's guarantee above.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        let map = Arc::new(map);
        if len >= TRIM_MIN {
            trimmer().register(Arc::downgrade(&map));
        }
        Ok(Mapped { map })
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[..]
    }
}

struct Trimmer {
    maps: Mutex<Vec<Weak<memmap2::Mmap>>>,
    wake: Condvar,
}

fn trimmer() -> &'static Trimmer {
    static T: OnceLock<&'static Trimmer> = OnceLock::new();
    T.get_or_init(|| {
        let t: &'static Trimmer = Box::leak(Box::new(Trimmer {
            maps: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("pec-trim".into())
            .spawn(move || t.run());
        if let Err(e) = spawned {
            // Nothing is lost: the mappings are only not trimmed.
            tracing::warn!(error = %e, "cannot start the page trimmer: large messages count fully in RSS");
        }
        t
    })
}

impl Trimmer {
    fn register(&self, map: Weak<memmap2::Mmap>) {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.push(map);
        self.wake.notify_one();
    }

    fn run(&self) {
        loop {
            let live: Vec<Arc<memmap2::Mmap>> = {
                let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
                maps.retain(|w| w.strong_count() > 0);
                while maps.is_empty() {
                    maps = self.wake.wait(maps).unwrap_or_else(|p| p.into_inner());
                    maps.retain(|w| w.strong_count() > 0);
                }
                maps.iter().filter_map(Weak::upgrade).collect()
            };
            for map in &live {
                // SAFETY: a read-only shared mapping of a file nobody writes
                // (`Mapped::new`'s contract): MADV_DONTNEED drops only this
                // process's page-table entries; the next read maps the same
                // bytes again from the page cache. Nothing is discarded.
                let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
            }
            drop(live);
            std::thread::sleep(TRIM_EVERY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// This process's resident file-backed pages (kB).
    fn resident_kb_of_self() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_large_mapping_reads_back_whole_and_its_pages_are_handed_back() {
        let len = 64 << 20;
        let mut f = tempfile::tempfile().expect("tempfile");
        let block: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        for _ in 0..(len / block.len()) {
            f.write_all(&block).expect("write");
        }
        f.sync_all().expect("sync");
        // SAFETY: this test's own file, not written again.
        let m = unsafe { Mapped::new(&f, len) }.expect("map");
        let before = resident_kb_of_self();
        // Touch every page, in passes, and check the bytes each time: a
        // trimmed page must read back the same.
        let mut peak = 0;
        for _ in 0..3 {
            let mut sum = 0u64;
            for (i, chunk) in m.chunks(1 << 20).enumerate() {
                assert_eq!(chunk, &block[..], "chunk {i} reads back the file");
                sum += u64::from(chunk[4095]);
                peak = peak.max(resident_kb_of_self().saturating_sub(before));
            }
            assert!(sum > 0);
        }
        // Allow the trimmer a few periods, then the mapping holds little.
        std::thread::sleep(TRIM_EVERY * 20);
        let after = resident_kb_of_self().saturating_sub(before);
        assert!(
            after < 8 * 1024,
            "after the passes {after} kB of the 64 MiB mapping still resident (peak {peak} kB)"
        );
    }

    #[test]
    fn a_small_mapping_is_not_registered() {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(&[7u8; 4096]).expect("write");
        // SAFETY: this test's own file, not written again.
        let m = unsafe { Mapped::new(&f, 4096) }.expect("map");
        assert_eq!(&m[..10], &[7u8; 10]);
        let t = trimmer();
        let maps = t.maps.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            !maps
                .iter()
                .filter_map(Weak::upgrade)
                .any(|a| std::ptr::eq(a.as_ptr(), m.as_ptr()))
        );
    }
}
