//! Where one command's time goes: timestamps at every hand-off of a write's path, for the
//! latency breakdown of `tessera bench --sequential` (feature `latency-probe`; without it
//! every mark compiles to nothing).
//!
//! One command at a time: [`start`] clears the marks, each hop records the first time it is
//! reached after that ([`mark`]), and [`finish`] returns them. The hops are told apart by
//! what passes (an `AppendEntries` or its response), so a leader's and a follower's hops do
//! not mix even in one process. Heartbeats and other traffic in between may move a mark;
//! medians over many commands wash that out.
//!
//! What it must not do: change behaviour. It only reads the clock and stores atomics.

#[cfg(feature = "latency-probe")]
mod enabled {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::Hop;

    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static MARKS: [AtomicU64; Hop::COUNT] = [const { AtomicU64::new(0) }; Hop::COUNT];

    fn nanos() -> u64 {
        let epoch = *EPOCH.get_or_init(Instant::now);
        // Never 0: 0 means "not reached".
        (epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// The log index of the probed command's entry (0 until its leader sends it).
    static TARGET: AtomicU64 = AtomicU64::new(0);

    pub(super) fn target(carried: super::Carried, at_leader_send: bool) -> u64 {
        let target = TARGET.load(Ordering::Acquire);
        if target == 0 && at_leader_send && carried.append {
            let last = carried.last;
            return match TARGET.compare_exchange(0, last, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => last,
                Err(current) => current,
            };
        }
        target
    }

    pub(super) fn target_now() -> u64 {
        TARGET.load(Ordering::Acquire)
    }

    pub(super) fn start() {
        for m in &MARKS {
            m.store(0, Ordering::Relaxed);
        }
        TARGET.store(0, Ordering::Release);
        MARKS[Hop::Execute as usize].store(nanos(), Ordering::Release);
    }

    pub(super) fn mark(hop: Hop) {
        let slot = &MARKS[hop as usize];
        if slot.load(Ordering::Relaxed) == 0 {
            let _ = slot.compare_exchange(0, nanos(), Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    pub(super) fn finish() -> [u64; Hop::COUNT] {
        MARKS[Hop::Done as usize].store(nanos(), Ordering::Release);
        std::array::from_fn(|i| MARKS[i].load(Ordering::Acquire))
    }
}

/// A point on a write's path, in the order a write at the leader passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Hop {
    /// The caller calls `Group::execute`.
    Execute,
    /// The leader's worker takes the request from its inbox.
    LeaderInbox,
    /// The leader's worker hands an `AppendEntries` to the transport.
    LeaderSend,
    /// A bond writer takes the `AppendEntries` from its queue.
    LeaderWriter,
    /// That writer's stream write returned.
    LeaderWritten,
    /// A follower's bond reader decoded the `AppendEntries`.
    FollowerRead,
    /// The follower's worker takes it from its inbox.
    FollowerInbox,
    /// The follower's worker hands its response to the transport.
    FollowerSend,
    /// The follower's bond writer takes the response from its queue.
    FollowerWriter,
    /// That writer's stream write returned.
    FollowerWritten,
    /// The leader's bond reader decoded the response.
    LeaderRead,
    /// The leader's worker takes it from its inbox.
    LeaderResponseInbox,
    /// The leader's worker applied the entry.
    Applied,
    /// The leader's worker answered the caller.
    Answered,
    /// The caller has the output back.
    Done,
}

impl Hop {
    /// How many hops there are.
    pub const COUNT: usize = Hop::Done as usize + 1;

    /// Every hop, in path order.
    pub const ALL: [Hop; Hop::COUNT] = [
        Hop::Execute,
        Hop::LeaderInbox,
        Hop::LeaderSend,
        Hop::LeaderWriter,
        Hop::LeaderWritten,
        Hop::FollowerRead,
        Hop::FollowerInbox,
        Hop::FollowerSend,
        Hop::FollowerWriter,
        Hop::FollowerWritten,
        Hop::LeaderRead,
        Hop::LeaderResponseInbox,
        Hop::Applied,
        Hop::Answered,
        Hop::Done,
    ];
}

/// Clears the marks and marks [`Hop::Execute`] now.
#[inline]
pub fn start() {
    #[cfg(feature = "latency-probe")]
    enabled::start();
}

/// Marks `hop` now, unless it was reached already since [`start`].
#[inline]
pub fn mark(hop: Hop) {
    #[cfg(feature = "latency-probe")]
    enabled::mark(hop);
    #[cfg(not(feature = "latency-probe"))]
    let _ = hop;
}

/// Marks [`Hop::Done`] and returns every mark (nanoseconds since the first mark of the
/// process; 0 where the hop was not reached). All zero without feature `latency-probe`.
#[inline]
pub fn finish() -> [u64; Hop::COUNT] {
    #[cfg(feature = "latency-probe")]
    return enabled::finish();
    #[cfg(not(feature = "latency-probe"))]
    [0; Hop::COUNT]
}

/// Whether this build records marks (feature `latency-probe`).
pub const ENABLED: bool = cfg!(feature = "latency-probe");

/// What a raft message carries that the probe follows: the entries of an `AppendEntries`
/// (after `prev`, up to `last`), or a successful response up to `last`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Carried {
    append: bool,
    prev: u64,
    last: u64,
}

/// What `message` carries that the probe follows, if anything.
#[inline]
pub(crate) fn carried(message: &crate::raft::Message) -> Option<Carried> {
    use crate::raft::MessageBody;
    match &message.body {
        MessageBody::Append {
            prev_index,
            entries,
            ..
        } if !entries.is_empty() => Some(Carried {
            append: true,
            prev: *prev_index,
            last: prev_index + entries.len() as u64,
        }),
        MessageBody::AppendResponse {
            success: true,
            index,
            ..
        } => Some(Carried {
            append: false,
            prev: 0,
            last: *index,
        }),
        _ => None,
    }
}

/// Marks `leader` for an `AppendEntries` that carries the probed command's entry, and
/// `follower` for a response that covers it. The probed entry is the first one a leader
/// sends after [`start`] (at [`Hop::LeaderSend`]).
#[inline]
pub(crate) fn mark_carried(carried: Carried, leader: Hop, follower: Hop) {
    if !ENABLED {
        return;
    }
    let target = target(carried, leader == Hop::LeaderSend);
    if carried.append && carried.prev < target && target <= carried.last {
        mark(leader);
    } else if !carried.append && target > 0 && carried.last >= target {
        mark(follower);
    }
}

/// The probed entry's index (0 while unknown); `carried` sets it when it is the first
/// `AppendEntries` with entries at [`Hop::LeaderSend`] since [`start`].
fn target(carried: Carried, at_leader_send: bool) -> u64 {
    #[cfg(feature = "latency-probe")]
    return enabled::target(carried, at_leader_send);
    #[cfg(not(feature = "latency-probe"))]
    {
        let _ = (carried, at_leader_send);
        0
    }
}

/// [`mark_carried`] of what `message` carries.
#[inline]
pub(crate) fn mark_message(message: &crate::raft::Message, leader: Hop, follower: Hop) {
    if ENABLED {
        if let Some(c) = carried(message) {
            mark_carried(c, leader, follower);
        }
    }
}

/// Marks [`Hop::Applied`] when entries up to `last` include the probed one.
#[inline]
pub(crate) fn mark_applied(last: u64) {
    if !ENABLED {
        return;
    }
    #[cfg(feature = "latency-probe")]
    let target = enabled::target_now();
    #[cfg(not(feature = "latency-probe"))]
    let target = 0;
    if target > 0 && last >= target {
        mark(Hop::Applied);
    }
}
