//! The `http` source: bodies that `POST /ingest` queued on the live board, routed
//! like any other input. The endpoint itself is the query server's
//! (`sql::http`); the queue between them is [`crate::live::Hub::ingest`].

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, bounded};

use super::Router;
use crate::live::{Hub, IngestBody};

/// Bodies `POST /ingest` may queue before it answers 429.
pub const HTTP_QUEUE: usize = 64;

/// Opens the board's ingest queue: `POST /ingest` accepts bodies from now on.
pub fn open(hub: &Hub) -> Receiver<IngestBody> {
    let (tx, rx) = bounded::<IngestBody>(HTTP_QUEUE);
    hub.set_ingest(Some(tx));
    rx
}

/// Routes queued bodies until a stop is requested. Never ends by itself (an HTTP
/// stream has no end), so it always reports an interrupted run.
pub fn run(hub: &Hub, rx: Receiver<IngestBody>, router: &mut Router) -> bool {
    let origin: Arc<str> = Arc::from("http");
    while !router.stopping() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(body) => {
                if router.route(body.data, &origin).is_err() {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    hub.set_ingest(None);
    // Bodies accepted (202) before the stop are still routed: nothing acknowledged is lost.
    while let Ok(body) = rx.try_recv() {
        if router.route(body.data, &origin).is_err() {
            break;
        }
    }
    false
}
