//! Stage 1: sources, de-batching and routing.
//!
//! In: bytes from a source (file, stdin, the built-in simulator).
//! Out: per partition, a [`Msg::Work`]: a shared [`Block`] of whole lines and the
//! byte ranges ([`Item`]s) of the events in it that belong to that partition.
//!
//! ```text
//! source ──bytes──▶ Router ──Arc<Block> + Vec<Item>──▶ partition 0..N (bounded channels)
//!                    │ split lines, de-batch JSON arrays,
//!                    │ route by hash(deviceId) % N
//! ```
//! The router parses only as far as `deviceId`; the partition does the full decode, so
//! decoding runs in parallel across partitions. Items travel as ranges into the shared
//! block: no per-event allocation or copy. A message whose `deviceId` cannot be found
//! is routed by line number; its partition's decode then dead-letters it with the reason.

pub mod checkpoint_log;
pub mod decode;
pub mod feed;
pub mod file;
pub mod http;
pub mod kafka;
pub mod mapped;
pub mod repartition;
pub mod simulator;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use serde_json::value::RawValue;

/// Longest message accepted; a longer one is dead-lettered (reason `parse`).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Target size of a block read from a source.
pub const BLOCK_SIZE: usize = 512 << 10;

/// Blocks queued for each partition before the router waits: up to 32 MiB of input per
/// partition (a block goes to every partition with events in it, so usually about that
/// in all). A partition's work comes in bursts (a minute's windows closing, its id
/// table doubling: the kernel zeroes the new pages, 10–20 ms for 8 MiB here), and the
/// router feeds every partition from each block: with 16 blocks (~5,000 events per
/// partition, ~3 ms) the others ran dry during such a burst.
pub const QUEUE_BLOCKS: usize = 64;

/// Whole lines of input, shared by every partition that has events in it.
/// When the last partition drops it, its buffer goes back to the router's pool, so a
/// long run reuses a few buffers instead of faulting in fresh pages for every block;
/// and the last block of a file mapping sends the mapping back, to be unmapped by the
/// router (tearing down 2,048 page table entries and flushing the other cores' TLBs is
/// ~4 % of a partition's time, and the partitions are the busier threads).
#[derive(Debug)]
pub struct Block {
    pub data: Bytes,
    recycle: Option<Sender<Spent>>,
    /// Where the bytes came from (a path, `stdin`, `simulator`), for dead-letter `source`.
    pub origin: Arc<str>,
    /// Line number (1-based) of the first line in `data`.
    pub first_line: u64,
    /// When the block was read, in ns since the pipeline started (latency tracking).
    pub arrived_ns: u64,
    /// Kafka: the offset of each message in the block, indexed by [`Item::line`]
    /// (there a message index); empty for line-oriented sources.
    pub offsets: Vec<i64>,
    /// Kafka: each message's timestamp (ms since the Unix epoch; the broker's append
    /// time, or the producer's create time); empty for line-oriented sources.
    pub timestamps: Vec<i64>,
    /// When the block was read, µs since the Unix epoch.
    pub read_us: i64,
}

/// A block's bytes: a buffer of its own, or a range of a file mapped into memory
/// (see [`mapped`]), which spares copying the file out of the page cache.
#[derive(Debug)]
pub enum Bytes {
    Owned(Vec<u8>),
    Mapped {
        map: Arc<mapped::Mapping>,
        start: usize,
        end: usize,
    },
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, start, end } => &map[*start..*end],
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes::Owned(v)
    }
}

impl Block {
    /// A block that is not recycled, for sources that build their own.
    pub fn new(data: Vec<u8>, origin: Arc<str>, arrived_ns: u64) -> Self {
        Block {
            data: Bytes::Owned(data),
            recycle: None,
            origin,
            first_line: 1,
            arrived_ns,
            offsets: Vec::new(),
            timestamps: Vec::new(),
            read_us: crate::event::now_us(),
        }
    }

    /// An item's message.
    #[inline]
    pub fn bytes(&self, it: &Item) -> &[u8] {
        &self.data[it.start as usize..it.end as usize]
    }

    /// When an item's message entered the system, µs since the Unix epoch: its Kafka
    /// timestamp if it has one, else when the block was read.
    pub fn entered_us(&self, it: &Item) -> i64 {
        match self.timestamps.get(it.line as usize) {
            Some(&ms) if ms > 0 => ms * 1000,
            _ => self.read_us,
        }
    }

    /// The source offset of an item's message, or `i64::MAX` for sources without offsets.
    #[inline]
    pub fn offset(&self, it: &Item) -> i64 {
        self.offsets
            .get(it.line as usize)
            .copied()
            .unwrap_or(i64::MAX)
    }

    /// Where an item came from, for dead-letter records: `topic/partition/offset` for
    /// Kafka, `origin:line` otherwise.
    pub fn source_of(&self, it: &Item) -> String {
        match self.offsets.get(it.line as usize) {
            Some(o) => format!("{}/{o}", self.origin),
            None => format!("{}:{}", self.origin, self.first_line + it.line as u64),
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let Some(pool) = &self.recycle else { return };
        // Pool full: let it go (free or unmap it here).
        match std::mem::replace(&mut self.data, Bytes::Owned(Vec::new())) {
            Bytes::Owned(mut data) => {
                data.clear();
                let _ = pool.try_send(Spent::Buffer(data));
            }
            Bytes::Mapped { map, .. } => {
                if let Some(map) = Arc::into_inner(map) {
                    let _ = pool.try_send(Spent::Mapping(map));
                }
            }
        }
    }
}

/// One event (or one undecodable message) in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub start: u32,
    pub end: u32,
    /// Line offset from `Block::first_line`.
    pub line: u32,
    pub flags: u8,
}

impl Item {
    /// The message was longer than [`MAX_MESSAGE`]; the range holds its beginning.
    pub const OVERSIZE: u8 = 1;
}

/// What a partition actor receives.
#[derive(Debug)]
pub enum Msg {
    Work {
        block: Arc<Block>,
        items: Vec<Item>,
    },
    /// The source is finite and has ended: close every window.
    Eof,
}

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

/// The channel to the partitions is closed: the pipeline is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the partitions have stopped")]
pub struct Disconnected;

/// A dropped block's storage on its way back to the router: a buffer to fill again,
/// or a file mapping no block uses any more, to unmap.
#[derive(Debug)]
pub enum Spent {
    Buffer(Vec<u8>),
    Mapping(mapped::Mapping),
}

/// Splits blocks into events and sends each partition its share.
pub struct Router {
    senders: Vec<Sender<Msg>>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    next_line: u64,
    /// What dropped blocks leave: buffers for sources to fill again, mappings to unmap.
    pool: (Sender<Spent>, Receiver<Spent>),
    /// Finds an event's device id (in the member `[source.fields] device_id` names).
    device_key: decode::DeviceKey,
}

impl Router {
    pub fn new(senders: Vec<Sender<Msg>>, epoch: Instant, stop: Arc<AtomicBool>) -> Self {
        // Enough buffers for every queued block plus a few in flight.
        let pool = bounded(senders.len() * QUEUE_BLOCKS + 8);
        Router {
            senders,
            epoch,
            stop,
            next_line: 1,
            pool,
            device_key: decode::DeviceKey::new("deviceId"),
        }
    }

    /// Routes by the device ids in member `name` instead of `deviceId`.
    pub fn with_device_field(mut self, name: &str) -> Self {
        self.device_key = decode::DeviceKey::new(name);
        self
    }

    /// An empty buffer with room for at least `capacity` bytes, recycled when possible.
    pub fn buffer(&self, capacity: usize) -> Vec<u8> {
        while let Ok(spent) = self.pool.1.try_recv() {
            if let Spent::Buffer(mut v) = spent {
                v.reserve(capacity);
                return v;
            }
        }
        Vec::with_capacity(capacity)
    }

    /// Unmaps the file mappings that blocks have finished with (and keeps buffers).
    pub fn unmap_spent(&self) {
        while let Ok(spent) = self.pool.1.try_recv() {
            if let Spent::Buffer(v) = spent {
                let _ = self.pool.0.try_send(Spent::Buffer(v));
                return; // (the rest next time, rather than cycle through buffers)
            }
        }
    }

    /// Whether a shutdown was requested (sources check between blocks).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn partitions(&self) -> usize {
        self.senders.len()
    }

    /// Routes a block of whole lines (the last may lack its `\n`).
    /// Blocks while a partition's queue is full: backpressure reaches the source.
    pub fn route(&mut self, data: impl Into<Bytes>, origin: &Arc<str>) -> Result<(), Disconnected> {
        let data: Bytes = data.into();
        let n = self.senders.len();
        let estimate = data.len() / 700 / n + 8;
        let mut items: Vec<Vec<Item>> = (0..n).map(|_| Vec::with_capacity(estimate)).collect();
        let mut line_no = 0u32;
        let mut start = 0usize;
        if let Some((s, e)) = one_multiline_value(&data, 0) {
            // One pretty-printed event or batch (an HTTP body): one message.
            route_line(&data, s, &data[s..e], 0, &self.device_key, &mut items);
            line_no = 1;
            start = data.len();
        }
        while start < data.len() {
            let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
            let mut line = &data[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            route_line(&data, start, line, line_no, &self.device_key, &mut items);
            line_no += 1;
            start = end + 1;
        }
        let block = Arc::new(Block {
            data,
            recycle: Some(self.pool.0.clone()),
            origin: origin.clone(),
            first_line: self.next_line,
            arrived_ns: self.epoch.elapsed().as_nanos() as u64,
            offsets: Vec::new(),
            timestamps: Vec::new(),
            read_us: crate::event::now_us(),
        });
        self.next_line += line_no as u64;
        self.send(block, items)
    }

    /// Routes the beginning of a message longer than [`MAX_MESSAGE`], to be dead-lettered.
    pub fn route_oversize(
        &mut self,
        prefix: Vec<u8>,
        origin: &Arc<str>,
    ) -> Result<(), Disconnected> {
        let n = self.senders.len();
        let mut items: Vec<Vec<Item>> = (0..n).map(|_| Vec::new()).collect();
        let p = (self.next_line % n as u64) as usize;
        items[p].push(Item {
            start: 0,
            end: prefix.len() as u32,
            line: 0,
            flags: Item::OVERSIZE,
        });
        let block = Arc::new(Block {
            data: Bytes::Owned(prefix),
            recycle: None,
            origin: origin.clone(),
            first_line: self.next_line,
            arrived_ns: self.epoch.elapsed().as_nanos() as u64,
            offsets: Vec::new(),
            timestamps: Vec::new(),
            read_us: crate::event::now_us(),
        });
        self.next_line += 1;
        self.send(block, items)
    }

    fn send(&mut self, block: Arc<Block>, items: Vec<Vec<Item>>) -> Result<(), Disconnected> {
        for (tx, items) in self.senders.iter().zip(items) {
            if !items.is_empty() {
                tx.send(Msg::Work {
                    block: block.clone(),
                    items,
                })
                .map_err(|_| Disconnected)?;
            }
        }
        Ok(())
    }

    /// Tells every partition that a finite source has ended.
    pub fn finish(self) {
        for tx in &self.senders {
            let _ = tx.send(Msg::Eof);
        }
    }
}

/// The queues from a [`Router`] to `n` partitions: the router's ends, and each
/// partition's [`Routed`] feed.
pub fn routes(n: usize) -> (Vec<Sender<Msg>>, Vec<Routed>) {
    (0..n)
        .map(|_| {
            let (tx, rx) = bounded::<Msg>(QUEUE_BLOCKS);
            (tx, Routed(rx))
        })
        .unzip()
}

/// A partition's feed from the router (file, stdin, simulator, http): blocks until
/// the end of a finite input, then its end; `Stop` once the router is gone.
#[derive(Debug)]
pub struct Routed(Receiver<Msg>);

impl feed::Feed for Routed {
    fn next(&mut self, wait: std::time::Duration) -> feed::Next {
        use crossbeam_channel::RecvTimeoutError;
        match self.0.recv_timeout(wait) {
            Ok(Msg::Work { block, items }) => feed::Next::Block(block, items),
            Ok(Msg::Eof) => feed::Next::End,
            Err(RecvTimeoutError::Timeout) => feed::Next::Idle,
            Err(RecvTimeoutError::Disconnected) => feed::Next::Stop,
        }
    }
}

/// Which partition a device belongs to.
pub fn partition_of(device_id: &str, partitions: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(device_id.as_bytes()) % partitions as u64) as usize
}

fn route_line(
    data: &[u8],
    offset: usize,
    line: &[u8],
    line_no: u32,
    device_key: &decode::DeviceKey,
    items: &mut [Vec<Item>],
) {
    let n = items.len();
    let by_line = line_no as usize % n;
    split_line(data, offset, line, line_no, |item, bytes| {
        let p = if item.flags & Item::OVERSIZE != 0 {
            by_line
        } else {
            device_key
                .find(bytes)
                .map_or(by_line, |d| partition_of(&d, n))
        };
        items[p].push(item);
    });
}

/// Splits one line (`data[offset..offset + line.len()]`) into items: nothing for a
/// blank line, one per element of a JSON array (a batch), else one for the line.
/// `push` gets each item with its bytes.
pub fn split_line(
    data: &[u8],
    offset: usize,
    line: &[u8],
    line_no: u32,
    mut push: impl FnMut(Item, &[u8]),
) {
    let first = line.iter().position(|b| !b.is_ascii_whitespace());
    let Some(first) = first else { return }; // blank line: not a message
    if line.len() > MAX_MESSAGE {
        // Too long to decode: its beginning goes to dead-letter (reason parse).
        let item = Item {
            start: offset as u32,
            end: (offset + 1024) as u32,
            line: line_no,
            flags: Item::OVERSIZE,
        };
        push(item, &line[..1024]);
        return;
    }
    let item = |s: usize, e: usize| Item {
        start: s as u32,
        end: e as u32,
        line: line_no,
        flags: 0,
    };
    if line[first] == b'[' {
        // A batch: one item per element, each routed by its own deviceId.
        if let Ok(elements) = serde_json::from_slice::<Vec<&RawValue>>(line) {
            for el in elements {
                let s = el.get().as_ptr() as usize - data.as_ptr() as usize;
                let e = s + el.get().len();
                push(item(s, e), &data[s..e]);
            }
            return;
        }
        // Not a valid array: the whole line is one bad message (decode says why).
    }
    push(item(offset, offset + line.len()), line);
}

/// Where the one JSON value that `data[start..]` holds begins and ends, if it spans
/// lines with nothing but whitespace after it: a pretty-printed message, which is one
/// message, not one per line. `None` for anything else (single lines, NDJSON).
fn one_multiline_value(data: &[u8], start: usize) -> Option<(usize, usize)> {
    let first = start
        + data[start..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())?;
    let newline = first + memchr::memchr(b'\n', &data[first..])?;
    if !matches!(data[first], b'{' | b'[') || data[newline..].iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let end = decode::skip_structure(data, first)?;
    (end > newline && data[end..].iter().all(u8::is_ascii_whitespace)).then_some((first, end))
}

/// Splits one message (`data[start..end]`, e.g. a Kafka record's value) into items,
/// all numbered `msg`: NDJSON lines, each an event or a batch. A message with no
/// event in it at all is one item, which decoding rejects (nothing is dropped
/// silently).
pub fn split_message(data: &[u8], start: usize, end: usize, msg: u32, out: &mut Vec<Item>) {
    let before = out.len();
    if let Some((s, e)) = one_multiline_value(&data[..end], start) {
        // One pretty-printed event or batch (`json.dumps(…, indent=2)`): one message.
        split_line(data, s, &data[s..e], msg, |item, _| out.push(item));
        return;
    }
    let mut s = start;
    while s < end {
        let e = memchr::memchr(b'\n', &data[s..end]).map_or(end, |i| s + i);
        let mut line = &data[s..e];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        split_line(data, s, line, msg, |item, _| out.push(item));
        s = e + 1;
    }
    if out.len() == before {
        out.push(Item {
            start: start as u32,
            end: end as u32,
            line: msg,
            flags: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_batches_are_split_and_routed_by_device() {
        let (t0, r0) = bounded(8);
        let (t1, r1) = bounded(8);
        let mut router = Router::new(
            vec![t0, t1],
            Instant::now(),
            Arc::new(AtomicBool::new(false)),
        );
        let ev = |d: &str| format!(r#"{{"eventId":"x","deviceId":"{d}"}}"#);
        let text = format!(
            "{}\n\n[{}, {}]\r\nbroken\n{}",
            ev("a"),
            ev("b"),
            ev("a"),
            ev("c")
        );
        router
            .route(text.clone().into_bytes(), &Arc::from("f"))
            .unwrap();
        let mut seen = Vec::new();
        for (p, rx) in [r0, r1].iter().enumerate() {
            while let Ok(Msg::Work { block, items }) = rx.try_recv() {
                for it in items {
                    let s = std::str::from_utf8(block.bytes(&it)).unwrap();
                    seen.push((p, it.line, s.to_owned()));
                }
            }
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
        let part = |d: &str| partition_of(d, 2);
        for (p, line, s) in &seen {
            match s.as_str() {
                "broken" => assert_eq!((*line, *p), (3, 3 % 2)),
                s => {
                    let d = decode::device_key(s.as_bytes(), "deviceId").unwrap();
                    assert_eq!(*p, part(&d));
                    assert!(s.starts_with('{') && s.ends_with('}'));
                }
            }
        }
        assert_eq!(
            seen.iter().filter(|s| s.1 == 2).count(),
            2,
            "batch is line 2"
        );
    }

    /// A pretty-printed message (an HTTP body, a Kafka record) is one message; NDJSON
    /// is one per line; routing reads the mapped device member.
    #[test]
    fn a_pretty_printed_message_is_one_message() {
        let pretty = "\n{\n  \"device\": \"a/b\",\n  \"x\": [\n 1\n ]\n}\n\n";
        let mut out = Vec::new();
        split_message(pretty.as_bytes(), 0, pretty.len(), 7, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].start, out[0].end),
            (1, pretty.trim_end().len() as u32)
        );
        let batch = "[\n  {\"device\": \"a\"},\n  {\"device\": \"b\"}\n]";
        out.clear();
        split_message(batch.as_bytes(), 0, batch.len(), 0, &mut out);
        assert_eq!(out.len(), 2, "a pretty batch is de-batched");
        let ndjson = "{\"device\":\"a\"}\n{\"device\":\"b\"}\n";
        out.clear();
        split_message(ndjson.as_bytes(), 0, ndjson.len(), 0, &mut out);
        assert_eq!(out.len(), 2, "NDJSON: one per line");
        let broken = "{\n  \"device\": \"a\"\n";
        out.clear();
        split_message(broken.as_bytes(), 0, broken.len(), 0, &mut out);
        assert_eq!(
            out.len(),
            2,
            "an unterminated value is read line by line (and refused)"
        );

        let (t0, r0) = bounded(8);
        let (t1, r1) = bounded(8);
        let mut router = Router::new(
            vec![t0, t1],
            Instant::now(),
            Arc::new(AtomicBool::new(false)),
        )
        .with_device_field("device");
        for d in ["a/b", "é #?\\\\", "c"] {
            let body = format!("{{\n  \"device\": \"{d}\",\n  \"v\": 1\n}}\n");
            router.route(body.into_bytes(), &Arc::from("http")).unwrap();
            let want = partition_of(&d.replace("\\\\", "\\"), 2);
            let rx = [&r0, &r1][want];
            let Ok(Msg::Work { items, .. }) = rx.try_recv() else {
                panic!("{d} not routed to partition {want}")
            };
            assert_eq!(items.len(), 1);
        }
    }

    #[test]
    fn a_complete_line_over_the_limit_is_marked_oversize() {
        let (tx, rx) = bounded(8);
        let mut router = Router::new(vec![tx], Instant::now(), Arc::new(AtomicBool::new(false)));
        let mut data = b"{\"deviceId\":\"a\"}\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_MESSAGE + 1));
        data.extend_from_slice(b"\n{\"deviceId\":\"b\"}\n");
        router.route(data, &Arc::from("f")).unwrap();
        let Ok(Msg::Work { items, .. }) = rx.try_recv() else {
            panic!("no work")
        };
        let flags: Vec<u8> = items.iter().map(|i| i.flags).collect();
        assert_eq!(flags, vec![0, Item::OVERSIZE, 0]);
        assert_eq!(
            items[1].end - items[1].start,
            1024,
            "only the beginning is kept for the dead letter"
        );
    }
}
