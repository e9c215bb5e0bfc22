//! Regular files are read by mapping them into memory, a chunk at a time: the
//! partitions decode straight from the page cache, and the copy `read(2)` makes of
//! every byte (the largest single cost of a file source) is gone.
//!
//! A chunk stays mapped while any block routed from it is queued or being decoded,
//! so memory stays bounded by the queues (a few chunks), not by the file.
//! Whatever does not fit the scheme is left to the `read(2)` loop, which takes over at
//! the first byte not routed here: a last line without `\n`, bytes appended after the
//! file was opened, a line longer than a chunk, or a file that cannot be mapped.
//!
//! Like every reader that maps files, this assumes the file is not truncated while it
//! is read (the kernel would answer a read past the new end with SIGBUS). Appending is
//! fine.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use super::{BLOCK_SIZE, Bytes, ReadError, Router};

/// How much of a file is mapped at once.
pub const CHUNK: usize = 8 << 20;

/// A read-only mapping of part of a file.
#[derive(Debug)]
pub struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value (unmapped on drop); the
// pointer is never written through, so sharing it across threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` (> 0) bytes of `fd` from `offset` (a multiple of the page size), its
    /// pages populated up front (one call instead of a fault per few pages).
    ///
    /// The mapping asks for huge pages before it is populated, so what is read from
    /// disk for it comes into the page cache in 2 MiB folios: this run and later ones
    /// then map a folio at a time, mostly one page-table entry per 2 MiB (the kernel
    /// places a large file mapping at an address aligned like its offset). A file
    /// cached in small pieces (written in small unaligned writes, say) costs an entry
    /// per 4 KiB page, 10–20 times the kernel time. If the advice fails (an old
    /// kernel), the pages are faulted in as they are read.
    pub fn new(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh read-only shared mapping chosen by the kernel; nothing
        // else refers to that address range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: advice on the range just mapped; neither changes its contents.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_HUGEPAGE);
            libc::madvise(ptr, len, libc::MADV_POPULATE_READ);
        }
        Ok(Mapping {
            ptr: ptr as *const u8,
            len,
        })
    }
}

impl std::ops::Deref for Mapping {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `new` mapped; no slice of it outlives
        // `self` (blocks hold the `Arc<Mapping>` while they lend its bytes).
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Routes the whole lines of `fd` from its current offset, if it is a regular file,
/// by mapping it [`CHUNK`] bytes at a time, and leaves the offset just past the last
/// line routed, for the `read(2)` loop to go on from. Returns false if a shutdown was
/// requested.
pub fn route_file(
    fd: BorrowedFd<'_>,
    origin: &Arc<str>,
    router: &mut Router,
) -> Result<bool, ReadError> {
    let io_err = |source| ReadError::Io {
        origin: origin.clone(),
        source,
    };
    let raw = fd.as_raw_fd();
    // SAFETY: fstat writes a `stat` for a valid descriptor; zeroed is a valid start.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `raw` is open for the duration (borrowed), `st` is writable.
    if unsafe { libc::fstat(raw, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(true); // a pipe, a terminal, …: read it
    }
    // SAFETY: lseek on a valid descriptor; a failure is reported as -1.
    let start = unsafe { libc::lseek(raw, 0, libc::SEEK_CUR) };
    if start < 0 {
        return Ok(true);
    }
    let size = st.st_size as u64;
    // SAFETY: sysconf has no preconditions.
    let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64;
    let mut pos = start as u64;
    let mut stopped = false;
    'chunks: while pos < size {
        router.unmap_spent();
        let base = pos - pos % page;
        let len = (size - base).min(CHUNK as u64) as usize;
        let Ok(map) = Mapping::new(fd, base, len) else {
            break; // cannot be mapped (e.g. a special file system): read it
        };
        let map = Arc::new(map);
        let mut s = (pos - base) as usize;
        // Whole lines only; a line that does not end in this chunk waits for the next
        // one, or for the read loop if not even one line ends here.
        let Some(last) = memchr::memrchr(b'\n', &map[s..]) else {
            break;
        };
        let end = s + last + 1;
        while s < end {
            if router.stopping() {
                stopped = true;
                pos = base + s as u64;
                break 'chunks;
            }
            let mut e = (s + BLOCK_SIZE).min(end);
            if e < end {
                // End the block after a newline: the last one in it, or the first
                // after it for a line longer than a block.
                e = match memchr::memrchr(b'\n', &map[s..e]) {
                    Some(i) => s + i + 1,
                    None => e + memchr::memchr(b'\n', &map[e..end]).map_or(end - e, |i| i + 1),
                };
            }
            let data = Bytes::Mapped {
                map: map.clone(),
                start: s,
                end: e,
            };
            router.route(data, origin)?;
            s = e;
        }
        pos = base + end as u64;
    }
    router.unmap_spent();
    // SAFETY: lseek on a valid descriptor to an offset within the file.
    if unsafe { libc::lseek(raw, pos as libc::off_t, libc::SEEK_SET) } < 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    Ok(!stopped)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use super::*;
    use crate::ingest::Msg;
    use crate::ingest::file::read_lines;

    /// Every routed item as (line number, bytes), and how many blocks were mapped.
    fn route_all(f: &std::fs::File) -> (Vec<(u64, Vec<u8>)>, usize) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut router = Router::new(vec![tx], Instant::now(), Arc::new(AtomicBool::new(false)));
        assert!(read_lines(f, Arc::from("f"), &mut router).unwrap());
        drop(router);
        let (mut items, mut mapped) = (Vec::new(), 0);
        for msg in rx.iter() {
            let Msg::Work { block, items: its } = msg else {
                continue;
            };
            mapped += matches!(block.data, Bytes::Mapped { .. }) as usize;
            for it in its {
                let bytes = block.bytes(&it).to_vec();
                items.push((block.first_line + it.line as u64, bytes));
            }
        }
        (items, mapped)
    }

    /// The non-blank lines of `text`, numbered from 1, without `\r`.
    fn lines(text: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                out.push((i as u64 + 1, line.to_vec()));
            }
        }
        out
    }

    #[test]
    fn a_mapped_file_yields_every_line_as_a_read_one_would() {
        // Short lines across several chunks, lines longer than a block, CRLF and blank
        // lines, then a line longer than a chunk (the read loop takes over from it)
        // and a last line without a newline.
        let mut text = Vec::new();
        let mut n = 0u64;
        while text.len() < 3 * CHUNK {
            n += 1;
            let pad = match n % 997 {
                0 => BLOCK_SIZE + 13,
                _ => (n * 7919 % 1500) as usize,
            };
            write!(
                text,
                "{{\"deviceId\":\"d{n}\",\"pad\":\"{}\"}}",
                "x".repeat(pad)
            )
            .unwrap();
            text.extend_from_slice(if n.is_multiple_of(5) { b"\r\n" } else { b"\n" });
            if n.is_multiple_of(11) {
                text.extend_from_slice(b"  \n");
            }
        }
        writeln!(
            text,
            "{{\"deviceId\":\"long\",\"pad\":\"{}\"}}",
            "y".repeat(CHUNK + 5)
        )
        .unwrap();
        text.extend_from_slice(b"{\"deviceId\":\"after\"}\n{\"deviceId\":\"last\"}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson");
        std::fs::write(&path, &text).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let (got, mapped) = route_all(&f);
        let want = lines(&text);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(g == w, "line {} differs (got line {})", w.0, g.0);
        }
        assert!(
            mapped > 2 * CHUNK / BLOCK_SIZE,
            "only {mapped} blocks were mapped"
        );

        // From where a previous reader left the descriptor (stdin redirected from a
        // file): lines are numbered from there.
        let mut f = std::fs::File::open(&path).unwrap();
        let skip = text.iter().position(|&b| b == b'\n').unwrap() + 1;
        f.seek(SeekFrom::Start(skip as u64)).unwrap();
        let (got, _) = route_all(&f);
        let want = lines(&text[skip..]);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "a descriptor's offset is where reading starts");
    }
}
