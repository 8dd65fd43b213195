//! The admin listener. For now it serves `/healthz`; the admin pages and the read API will live
//! here too. It only reads, through the `query_only` pool; it never holds the writer connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::api::Api;
use crate::db::ReadPool;
use crate::http::{Request, Response};
use crate::webhook::{error, Counters};
use crate::writer::WriterHandle;

/// What the admin handlers share.
pub struct Admin {
    pub pool: ReadPool,
    pub writer: WriterHandle,
    pub counters: Arc<Counters>,
    pub api: Api,
}

impl Admin {
    /// Handles one request on the admin listener.
    pub fn handle(&self, req: Request) -> Response {
        if req.path.starts_with("/api/") {
            return self.api.handle(&req);
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("GET" | "HEAD", "/healthz") => self.healthz(),
            (_, "/healthz") => error(405, "method not allowed").with_header("Allow", "GET"),
            _ => error(404, "not found"),
        }
    }

    /// Liveness plus a database read: 200 when a read connection can query the events table.
    fn healthz(&self) -> Response {
        let check = self.pool.get().map_err(|e| e.to_string()).and_then(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM (SELECT 1 FROM events LIMIT 1)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| e.to_string())
        });
        let queued = self.writer.stats().queued.load(Ordering::Relaxed);
        let stored = self.counters.stored.load(Ordering::Relaxed);
        match check {
            Ok(_) => Response::json(
                200,
                format!("{{\"status\":\"ok\",\"database\":\"ok\",\"writer_queue\":{queued},\"stored_since_start\":{stored}}}"),
            ),
            Err(e) => {
                log::error!("healthz: database check failed: {e}");
                Response::json(503, "{\"status\":\"error\",\"database\":\"unavailable\"}")
            }
        }
    }
}
