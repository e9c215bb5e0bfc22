//! `file` and `stdin` sources: NDJSON (one message per line) read in large blocks.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use super::{BLOCK_SIZE, MAX_MESSAGE, ReadError, Router};

/// Reads `r` to its end (or until a shutdown is requested), routing whole lines.
/// Returns whether the input was read to its end. A regular file is mapped rather than
/// read, as far as it goes (see [`super::mapped`]); `read(2)` takes the rest.
pub fn read_lines(r: impl AsFd, origin: Arc<str>, router: &mut Router) -> Result<bool, ReadError> {
    if !super::mapped::route_file(r.as_fd(), &origin, router)? {
        return Ok(false);
    }
    let io_err = |source| ReadError::Io {
        origin: origin.clone(),
        source,
    };
    let mut buf: Vec<u8> = router.buffer(BLOCK_SIZE);
    // Set while skipping the rest of an over-long line.
    let mut skipping = false;
    loop {
        if router.stopping() {
            return Ok(false);
        }
        // Fill the block; a single line longer than a block makes the block grow.
        let got = read_some(&r, &mut buf).map_err(io_err)?;
        if got == 0 {
            if !buf.is_empty() && !skipping {
                router.route(std::mem::take(&mut buf), &origin)?;
            }
            return Ok(true);
        }
        if skipping {
            match memchr::memchr(b'\n', &buf) {
                Some(i) => {
                    buf.drain(..=i);
                    skipping = false;
                }
                None => {
                    buf.clear();
                    continue;
                }
            }
        }
        let Some(last_nl) = memchr::memrchr(b'\n', &buf) else {
            if buf.len() > MAX_MESSAGE {
                buf.truncate(1024);
                router.route_oversize(std::mem::take(&mut buf), &origin)?;
                skipping = true;
            }
            continue; // a long line: read more before routing
        };
        // An over-long tail after the last newline is caught on a later round.
        let mut next = router.buffer(BLOCK_SIZE);
        next.extend_from_slice(&buf[last_nl + 1..]);
        buf.truncate(last_nl + 1);
        router.route(std::mem::replace(&mut buf, next), &origin)?;
    }
}

/// One `read(2)` into the spare capacity of `buf` (at least a block's worth), as much
/// as is there now: a pipe's bytes are routed as they come. Reading straight into the
/// spare capacity spares zeroing half a megabyte per block, which `Read::read` needs.
fn read_some(r: &impl AsFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < BLOCK_SIZE / 2 {
        buf.reserve(BLOCK_SIZE);
    }
    let spare = buf.spare_capacity_mut();
    loop {
        // SAFETY: the kernel writes at most `spare.len()` bytes into `spare`, which
        // `buf` owns; only the bytes it reports written are added to `buf`'s length.
        let n = unsafe {
            libc::read(
                r.as_fd().as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
            )
        };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: `read` initialised the first `n` spare bytes.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
