//! How the database is operated: who checkpoints the WAL.

use std::time::Duration;

use crate::support::{event, TestApp};

#[test]
fn checkpoint_interval_zero_leaves_checkpoints_to_someone_else() {
    for (ms, moves_pages) in [(0, false), (100, true)] {
        let app = TestApp::start_with(&format!("checkpoint_interval_ms = {ms}"));
        let size = || std::fs::metadata(app.db_path()).unwrap().len();
        let at_start = size();
        for _ in 0..30 {
            assert_eq!(app.post_signed(&event("invoice.paid")).status, 200);
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            size() > at_start,
            moves_pages,
            "checkpoint_interval_ms = {ms}"
        );
    }
}
