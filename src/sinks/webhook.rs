//! The `webhook` sink: each alert POSTed to an HTTP(S) endpoint, as the contract's
//! alert record (`format = "json"`) or as a CloudEvents 1.0 event in structured mode
//! (`format = "cloudevents"`, what Event Grid's CloudEvents endpoints accept).
//!
//! One request per alert, with its id in an `Idempotency-Key` header (a retried or
//! replayed alert has the same key, so the receiver can drop repeats). Alerts are
//! queued as the sink thread receives them and sent at each flush and whenever the
//! queue fills: one device's alerts in order, one after another; different devices'
//! concurrently (up to `max_concurrency`). A request that fails with a 5xx, a 429, a
//! timeout or a connection error is sent again with a growing pause, up to
//! `max_retries` times; then, or at once for any other 4xx, the alert becomes a dead
//! letter with reason `sink`. A flush returns only when every queued alert is
//! delivered or dead-lettered, so Kafka offsets are never committed past an alert that
//! is neither.
//!
//! An endpoint that stays down would hold the sink thread (and through it the
//! pipeline) for every alert's whole retry budget. So once an alert has been given up
//! on, the endpoint counts as down for [`DOWN_FOR`]: meanwhile each alert is sent once,
//! without retries, and the first success ends it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::SinkError;
use crate::config::sink::{Webhook, WebhookFormat};
use crate::event::{Alert, AlertState, DeadLetter, Reason, now_ms, rfc3339_ms};

/// Alerts queued before they are sent without waiting for the next flush.
const QUEUE: usize = 256;
/// How long the endpoint counts as down after an alert was given up on.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// What one alert's delivery came to.
enum Delivery {
    /// Delivered, after this many retries.
    Delivered(u32),
    /// Given up: the reason, and how many times it was sent again before.
    Failed(String, u32),
}

pub struct WebhookSink {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
    format: WebhookFormat,
    headers: reqwest::header::HeaderMap,
    max_retries: u32,
    max_concurrency: usize,
    queue: Vec<Alert>,
    failed: Vec<DeadLetter>,
    retries: u64,
    /// Until when the endpoint counts as down (see the module docs).
    down_until: parking_lot::Mutex<Option<Instant>>,
}

impl WebhookSink {
    pub fn new(c: &Webhook) -> Result<Self, SinkError> {
        let err = |e: String| SinkError::Webhook(e);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start its runtime: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(c.timeout())
            .build()
            .map_err(|e| err(format!("cannot build the HTTP client: {e}")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in c.headers.iter().flatten() {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| err(format!("header {k:?}: {e}")))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| err(format!("header {k:?}: {e}")))?;
            headers.insert(name, value);
        }
        Ok(WebhookSink {
            rt,
            client,
            url: c.url.clone(),
            format: c.format.unwrap_or_default(),
            headers,
            max_retries: c.max_retries.unwrap_or(5),
            max_concurrency: c.max_concurrency.unwrap_or(8).max(1) as usize,
            queue: Vec::new(),
            failed: Vec::new(),
            retries: 0,
            down_until: parking_lot::Mutex::new(None),
        })
    }

    /// Queues the alerts; sends the queue when it is full.
    pub fn write(&mut self, alerts: &[Alert]) {
        self.queue.extend_from_slice(alerts);
        if self.queue.len() >= QUEUE {
            self.send_queued();
        }
    }

    /// Sends everything queued (see the module docs).
    pub fn flush(&mut self) {
        self.send_queued();
    }

    /// Requests sent again after a failure, since the start.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Alerts given up on since the last call, as dead letters.
    pub fn take_failed(&mut self, into: &mut Vec<DeadLetter>) {
        into.append(&mut self.failed);
    }

    fn send_queued(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        // One queue per device, in the order its alerts came.
        let mut by_device: HashMap<&str, Vec<&Alert>> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for a in &self.queue {
            by_device
                .entry(&a.device_id)
                .or_insert_with(|| {
                    order.push(&a.device_id);
                    Vec::new()
                })
                .push(a);
        }
        let queues: Vec<Vec<&Alert>> = order
            .iter()
            .map(|d| by_device.remove(d).unwrap_or_default())
            .collect();
        let this = &*self;
        let results: Vec<(&Alert, Delivery)> = this.rt.block_on(async {
            futures::stream::iter(queues)
                .map(|queue| async move {
                    let mut out = Vec::with_capacity(queue.len());
                    for a in queue {
                        out.push((a, this.deliver(a).await));
                    }
                    out
                })
                .buffer_unordered(this.max_concurrency)
                .flat_map(futures::stream::iter)
                .collect()
                .await
        });
        let mut failed = Vec::new();
        let mut retries = 0;
        for (a, d) in results {
            match d {
                Delivery::Delivered(tries) => retries += tries as u64,
                Delivery::Failed(error, tries) => {
                    retries += tries as u64;
                    tracing::warn!(url = %self.url, alert = %a.id, error, "Webhook: giving up on an alert after its retries; it is dead-lettered.");
                    failed.push(DeadLetter {
                        reason: Reason::Sink,
                        error: format!("webhook {}: {error}", self.url),
                        payload: serde_json::to_string(a).unwrap_or_default(),
                        source: format!("webhook:{}", self.url),
                        received_at: rfc3339_ms(now_ms()),
                    });
                }
            }
        }
        self.retries += retries;
        self.failed.extend(failed);
        self.queue.clear();
    }

    /// POSTs one alert until it is delivered, or given up on.
    async fn deliver(&self, a: &Alert) -> Delivery {
        let (content_type, body) = match self.format {
            WebhookFormat::Json => (
                "application/json",
                serde_json::to_vec(a).unwrap_or_default(),
            ),
            WebhookFormat::Cloudevents => (
                "application/cloudevents+json; charset=utf-8",
                cloud_event(a),
            ),
        };
        let down = self
            .down_until
            .lock()
            .is_some_and(|until| Instant::now() < until);
        let max_retries = if down { 0 } else { self.max_retries };
        let mut attempt = 0u32;
        loop {
            let sent = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .header("Idempotency-Key", &a.id)
                .body(body.clone())
                .send()
                .await;
            let error = match sent {
                Ok(r) if r.status().is_success() => {
                    *self.down_until.lock() = None;
                    return Delivery::Delivered(attempt);
                }
                Ok(r) => {
                    let status = r.status();
                    let retriable = status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                    let e = format!("HTTP {status}");
                    if !retriable {
                        return Delivery::Failed(e, attempt);
                    }
                    e
                }
                Err(e) => format!("{e}"),
            };
            if attempt >= max_retries {
                let mut until = self.down_until.lock();
                if until.is_none_or(|u| Instant::now() >= u) {
                    tracing::warn!(url = %self.url, error, "Webhook: the endpoint counts as down for {DOWN_FOR:?}: each alert is sent once, without retries, until one is delivered.");
                }
                *until = Some(Instant::now() + DOWN_FOR);
                return Delivery::Failed(
                    format!(
                        "{error} (after {} attempt{}{})",
                        attempt + 1,
                        if attempt == 0 { "" } else { "s" },
                        if down { "; the endpoint was down" } else { "" }
                    ),
                    attempt,
                );
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
        }
    }
}

/// An alert as a CloudEvents 1.0 event, structured mode: the alert record is `data`.
fn cloud_event(a: &Alert) -> Vec<u8> {
    let kind = match a.state {
        AlertState::Raised => "com.eventide.alert.raised",
        AlertState::Cleared => "com.eventide.alert.cleared",
    };
    serde_json::to_vec(&serde_json::json!({
        "specversion": "1.0",
        "id": a.id,
        "source": format!("eventide/rules/{}", a.rule),
        "type": kind,
        "subject": a.device_id,
        "time": a.window_end,
        "datacontenttype": "application/json",
        "data": a,
    }))
    .unwrap_or_default()
}
