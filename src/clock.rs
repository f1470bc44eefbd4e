//! The wall clock as the node reads it: Unix seconds behind a function, so that tests,
//! the mock and the simulator choose `now`. A leaf: it imports nothing from the crate.
use std::sync::Arc;

/// Unix seconds, from whatever clock the node uses. Validators never read a clock
/// themselves: the caller passes `now`, so tests and the mock can choose it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// A clock that starts at `start` and advances with real time: mock collateral has a
/// fixed validity window, so mock-attested nodes run their clock from inside it.
pub fn clock_from(start: u64) -> Clock {
    let origin = std::time::Instant::now();
    Arc::new(move || start.saturating_add(origin.elapsed().as_secs()))
}
