//! `file` and `stdin` sources: NDJSON (one message per line) read in large blocks.

use std::io::{self, Read};
use std::sync::Arc;

use super::{BLOCK_SIZE, Disconnected, MAX_MESSAGE, Router};

/// How reading a finite source ended.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {origin}: {source}")]
    Io {
        origin: Arc<str>,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Disconnected(#[from] Disconnected),
}

/// Reads `r` to its end (or until a shutdown is requested), routing whole lines.
/// Returns whether the input was read to its end.
pub fn read_lines(
    mut r: impl Read,
    origin: Arc<str>,
    router: &mut Router,
) -> Result<bool, ReadError> {
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
        let before = buf.len();
        let want = (buf.len() + BLOCK_SIZE).max(buf.capacity());
        buf.resize(want, 0);
        let got = loop {
            match r.read(&mut buf[before..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            }
        };
        buf.truncate(before + got);
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
