//! The webhook endpoint: route, verify, parse, hand to the writer, answer.
//!
//! A request is answered 2xx only after the writer has committed its event. Every refusal has a
//! short JSON body saying what is wrong and writes nothing: no or bad signature 400, stale
//! timestamp 400, not an event 400, wrong method 405, unknown path 404 (the HTTP layer answers 413
//! for an oversized body before it is read). When the writer cannot take the event, the answer is
//! 503 with `Retry-After`, so Stripe retries instead of believing it delivered.
//!
//! The signature is checked before the body is parsed: nothing unauthenticated is looked into.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::Error;
use crate::event::envelope;
use crate::event::signature::{self, SignatureError};
use crate::http::{Request, Response};
use crate::ingest::store::{store_event_with, Effects, Ingest, Outcome, Source};
use crate::ingest::tie_ahead::TieAhead;
use crate::store::writer::WriterHandle;
use crate::time::now_ms;

/// Counts of what the endpoint answered, for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct Counters {
    pub stored: AtomicU64,
    pub duplicate: AtomicU64,
    pub signature_failed: AtomicU64,
    pub bad_request: AtomicU64,
    pub unavailable: AtomicU64,
    /// Events the writer could not store (it failed, or its queue was full).
    pub write_failed: AtomicU64,
    /// Unix seconds of the newest stored event's arrival (0: none since start).
    pub last_stored_at: AtomicU64,
}

/// Everything the endpoint needs; shared by every connection thread.
pub struct Endpoint {
    pub path: String,
    pub secrets: Vec<String>,
    pub tolerance_secs: i64,
    pub writer: WriterHandle,
    /// What else storing an event does (see [`Effects`]).
    pub effects: Arc<Effects>,
    pub counters: Arc<Counters>,
    /// Which events will likely meet a same-second tie (see [`TieAhead`]).
    pub tie_ahead: TieAhead,
}

impl Endpoint {
    /// Handles one request on the webhook listener.
    pub fn handle(&self, req: Request) -> Response {
        if req.path != self.path {
            return Response::json_error(
                404,
                "not found: stripe-inbox takes webhooks at its configured path only",
            );
        }
        if req.method != "POST" {
            return Response::json_error(
                405,
                "method not allowed: Stripe delivers events with POST",
            )
            .with_header("Allow", "POST");
        }
        let now_ms = now_ms();
        self.receive(req, now_ms)
    }

    fn receive(&self, req: Request, now_ms: i64) -> Response {
        // Verify the signature over the raw bytes. A repeated header is refused, as stripe-node does.
        let header = match req.header_count("stripe-signature") {
            0 => None,
            1 => req.header("stripe-signature"),
            _ => Some(""),
        };
        let verified = match signature::verify(
            header,
            &req.body,
            &self.secrets,
            now_ms / 1000,
            self.tolerance_secs,
        ) {
            Ok(v) => v,
            Err(e) => {
                self.counters
                    .signature_failed
                    .fetch_add(1, Ordering::Relaxed);
                if let SignatureError::OutsideTolerance {
                    offset_secs,
                    tolerance_secs,
                } = e
                {
                    log::warn!(
                        "webhook signature is valid but its timestamp is {}s {} this server's clock \
                         (tolerance {tolerance_secs}s): if every event is rejected, check the clock \
                         (timedatectl status; chrony or systemd-timesyncd)",
                        offset_secs.abs(),
                        if offset_secs >= 0 { "behind" } else { "ahead of" },
                    );
                }
                let kind = match e {
                    SignatureError::Missing => "missing",
                    SignatureError::Malformed => "malformed",
                    SignatureError::NoV1 => "no_v1",
                    SignatureError::NoMatch => "no_match",
                    SignatureError::OutsideTolerance { .. } => "timestamp",
                };
                return Response::json_error(400, &format!("signature: {e}"))
                    .with_log(format!("rejected=signature reason={kind}"));
            }
        };

        // Parse the envelope.
        let mut envelope = match envelope::parse(&req.body) {
            Ok(env) => env,
            Err(e) => {
                self.counters.bad_request.fetch_add(1, Ordering::Relaxed);
                return Response::json_error(400, &e.to_string()).with_log("rejected=body");
            }
        };
        let fields = format!("event={} type={}", envelope.id, envelope.event_type);
        // A tie compares whole states: parse this one here rather than on the writer thread.
        if self.tie_ahead.expects_tie(&envelope) {
            envelope.parse_whole_object(&req.body);
        }

        // Hand it to the writer and wait for COMMIT.
        let ingest = Ingest {
            envelope,
            body: req.body,
            secret_index: Some(verified.secret_index),
            received_at_ms: now_ms,
            source: Source::Webhook,
        };
        // The event comes back with the answer, so that freeing its parsed envelope (a tree of
        // allocations) happens on this thread, not on the writer's (measured: 2% of its time).
        // Retryable: the writer runs it without a savepoint first (see `store::writer`).
        let effects = self.effects.clone();
        let ingest = Arc::new(ingest);
        let stored = self.writer.run_retryable(move |conn, guard| {
            store_event_with(conn, &ingest, &effects, guard)
                .map(|outcome| (outcome, ingest.clone()))
        });
        match stored.map(|(outcome, _event)| outcome) {
            Ok(Outcome::Stored { .. }) => {
                self.counters.stored.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .last_stored_at
                    .store((now_ms / 1000) as u64, Ordering::Relaxed);
                Response::json(200, "{\"received\":true}")
                    .with_log(format!("{fields} outcome=stored"))
            }
            Ok(Outcome::Duplicate { deliveries }) => {
                self.counters.duplicate.fetch_add(1, Ordering::Relaxed);
                Response::json(200, "{\"received\":true,\"duplicate\":true}").with_log(format!(
                    "{fields} outcome=duplicate deliveries={deliveries}"
                ))
            }
            Err(e) => {
                self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                if !matches!(e, Error::Busy) {
                    self.counters.write_failed.fetch_add(1, Ordering::Relaxed);
                }
                let log = match &e {
                    Error::Busy => format!("{fields} outcome=unavailable reason=\"queue full\""),
                    Error::Unavailable(why) => {
                        format!("{fields} outcome=unavailable reason={why:?}")
                    }
                    other => format!("{fields} outcome=error reason={:?}", other.to_string()),
                };
                Response::json_error(503, "temporarily unable to store the event; retry later")
                    .with_header("Retry-After", "5")
                    .with_log(log)
            }
        }
    }
}
