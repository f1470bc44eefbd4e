//! How long durable writes take: the fsync latency an operator watches (architecture.md §12).
//!
//! The worker times every [`Storage::write`](super::Storage::write) — one durable batch,
//! one sync for a durable store — and records it here; the metrics endpoint and the
//! benchmark read it. Lock-free counters only; nothing here touches the disk.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets, Prometheus style.
pub(crate) const WRITE_SECONDS_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Counters of the durable writes of one member.
#[derive(Debug, Default)]
pub struct WriteTiming {
    writes: AtomicU64,
    entries: AtomicU64,
    nanos_total: AtomicU64,
    /// Per bucket, not cumulative: writes that took at most that bucket's bound and more
    /// than the previous one's.
    buckets: [AtomicU64; WRITE_SECONDS_BUCKETS.len()],
}

/// A consistent-enough copy of [`WriteTiming`] (each counter read once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteTimes {
    /// Durable batches written.
    pub writes: u64,
    /// Log entries in them.
    pub entries: u64,
    /// Time spent in them.
    pub seconds_total: f64,
    /// Cumulative counts: `(upper bound in seconds, writes at most that long)`.
    pub buckets: Vec<(f64, u64)>,
}

impl WriteTiming {
    /// Records one durable write of `entries` log entries that took `elapsed`.
    pub fn record(&self, elapsed: Duration, entries: usize) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.entries.fetch_add(entries as u64, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.nanos_total.fetch_add(nanos, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = WRITE_SECONDS_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A copy of the counters for a metrics scrape; counting goes on meanwhile.
    pub fn read(&self) -> WriteTimes {
        let mut cumulative = 0;
        let buckets = WRITE_SECONDS_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        WriteTimes {
            writes: self.writes.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            seconds_total: self.nanos_total.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_in_cumulative_buckets() {
        let t = WriteTiming::default();
        t.record(Duration::from_micros(50), 3);
        t.record(Duration::from_micros(700), 1);
        t.record(Duration::from_secs(2), 0); // beyond the last bucket: counted, not bucketed
        let r = t.read();
        assert_eq!(r.writes, 3);
        assert_eq!(r.entries, 4);
        assert!(
            (r.seconds_total - 2.00075).abs() < 1e-9,
            "{}",
            r.seconds_total
        );
        let at = |bound: f64| r.buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(0.000_1), Some(1));
        assert_eq!(at(0.000_5), Some(1));
        assert_eq!(at(0.001), Some(2));
        assert_eq!(at(1.0), Some(2));
    }
}
