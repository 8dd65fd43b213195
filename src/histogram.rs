//! A lock-free histogram with fixed bucket bounds, and its Prometheus text form: what the writer
//! records its commit latencies and batch sizes in, and forwarding its attempt latencies.
//! A leaf: it knows nothing of what it measures.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds, recorded with relaxed atomic adds: one bucket add, one
/// sum add and one count add per observation, no lock. Bucket counts are not cumulative here;
/// [`Histogram::render`] accumulates them.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [u64; N],
    /// `buckets[i]` counts observations `<= bounds[i]` and `> bounds[i-1]`; the last one is +Inf.
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    sum: AtomicU64,
    count: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: [u64; N]) -> Histogram<N> {
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: u64) {
        match self.bounds.iter().position(|b| value <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// Writes `name_bucket{le=..}`, `name_sum` and `name_count`, values divided by `scale` (e.g.
    /// 1e6 to turn microseconds into seconds).
    pub fn render(&self, out: &mut String, name: &str, help: &str, scale: f64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_samples(out, name, scale, "");
    }

    /// The sample lines of [`Histogram::render`] without its `HELP`/`TYPE` header, each with
    /// `labels` (`destination="app"`, or empty) beside `le`: for a family of several histograms.
    pub fn render_samples(&self, out: &mut String, name: &str, scale: f64, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                *bound as f64 / scale
            );
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            braces(labels),
            self.sum() as f64 / scale
        );
        // The count is the +Inf bucket, so that the two always agree within one scrape.
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf() {
        let h = Histogram::new([1, 10, 100]);
        for v in [0, 1, 5, 10, 50, 1000] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help", 1.0);
        assert_eq!(
            out,
            "# HELP x help\n# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"10\"} 4\n\
             x_bucket{le=\"100\"} 5\nx_bucket{le=\"+Inf\"} 6\nx_sum 1066\nx_count 6\n"
        );
    }
}
