//! The sign-in queue: when more people are signing in than the password-hashing threads can
//! take (the `sign_ins` admission gate is full, or others are already waiting), a browser
//! gets a ticket and waits on a page that shows its place and an honest wait, and refreshes
//! itself. An admitter lets the front of the queue through as hashing capacity frees up:
//! each admitted ticket is a pass for one password attempt.
//!
//! Fairness: a ticket's place is (arrival window, random draw). Everyone who arrives in the
//! same `WINDOW_SECS` is ordered by lottery, so arriving a few seconds earlier gains nothing;
//! the ticket lives in the encrypted session cookie, so refreshing or opening more tabs keeps
//! the same place and cannot forge a better one. Tickets older than `TICKET_MAX_AGE_SECS`
//! are reissued, so an old cookie is no advantage either.
//!
//! Failure: if the admitter stops (no heartbeat for `HEARTBEAT_SECS`) or the queue's lock is
//! poisoned, the queue fails open: sign-ins go straight to the hashing gate, which still
//! answers 503 with Retry-After past its bound. The queue is per node, like the hashing
//! threads it protects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

/// Arrivals within one window are ordered by lottery.
pub const WINDOW_SECS: i64 = 30;
/// A waiting browser that has not asked for its place for this long has left the queue.
pub const ABANDON_SECS: i64 = 90;
/// An admitted ticket's pass lasts this long (time to type a password).
pub const PASS_SECS: i64 = 300;
/// The queue fails open when the admitter has not run for this long.
pub const HEARTBEAT_SECS: i64 = 5;
/// Older tickets are reissued.
pub const TICKET_MAX_AGE_SECS: i64 = 3600;
/// How often the waiting page refreshes itself.
pub const REFRESH_SECS: i64 = 10;
/// The longest Retry-After a refused API sign-in is given: past a minute, a client is better
/// told to come back than to sleep on an estimate.
pub const MAX_RETRY_AFTER_SECS: u64 = 60;

/// A place in the queue, kept in the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ticket {
    /// Arrival window: Unix seconds / WINDOW_SECS.
    pub window: i64,
    /// The lottery draw within the window.
    pub draw: u64,
}

/// What a waiting browser is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Status {
    /// Through: sign in now.
    Admitted,
    /// Still waiting: place (1 = next), how many wait, and the estimated wait in seconds.
    Waiting {
        position: usize,
        waiting: usize,
        wait_secs: i64,
    },
}

#[derive(Debug, Default)]
struct Inner {
    /// Waiting tickets in queue order, with when each last asked for its place.
    waiting: BTreeMap<Ticket, i64>,
    /// Places, recomputed by each admitter pass.
    positions: HashMap<Ticket, usize>,
    /// Admitted tickets' passes and when they were issued.
    passes: HashMap<Ticket, i64>,
    /// When recent passes were used (Unix ms), for the wait estimate.
    used: VecDeque<i64>,
}

#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    heartbeat: AtomicI64,
    /// Sign-ins a second the hashing threads can do, before any have been measured.
    nominal_rate: f64,
}

impl Queue {
    pub fn new(hash_threads: usize) -> Queue {
        Queue {
            inner: Mutex::default(),
            heartbeat: AtomicI64::new(i64::MIN),
            // About 17 ms an argon2id hash at OWASP parameters: ~50 a second a thread.
            nominal_rate: 50.0 * hash_threads.max(1) as f64,
        }
    }

    /// Whether the queue is working (else everything bypasses it).
    pub fn healthy(&self, now: i64) -> bool {
        now.saturating_sub(self.heartbeat.load(Ordering::Relaxed)) <= HEARTBEAT_SECS
            && !self.inner.is_poisoned()
    }

    /// Whether a sign-in without a pass must queue: the queue is working and either people
    /// are already waiting or no hashing place is free.
    pub fn must_queue(&self, now: i64, free_places: usize, ticket: Option<Ticket>) -> bool {
        if !self.healthy(now) {
            return false;
        }
        let Ok(q) = self.inner.lock() else {
            return false;
        };
        if ticket.is_some_and(|t| q.passes.contains_key(&t)) {
            return false;
        }
        !q.waiting.is_empty() || free_places == 0
    }

    /// Join the queue (or keep the place already held). Returns the ticket to keep.
    pub fn join(&self, now: i64, held: Option<Ticket>) -> Ticket {
        let ticket = match held {
            Some(t) if now / WINDOW_SECS - t.window <= TICKET_MAX_AGE_SECS / WINDOW_SECS => t,
            _ => Ticket {
                window: now / WINDOW_SECS,
                draw: rand::random(),
            },
        };
        if let Ok(mut q) = self.inner.lock()
            && !q.passes.contains_key(&ticket)
        {
            q.waiting.entry(ticket).or_insert(now);
            if !q.positions.contains_key(&ticket) {
                // Until the next admitter pass: behind everyone counted so far.
                let n = q.positions.len() + 1;
                q.positions.insert(ticket, n);
            }
        }
        ticket
    }

    /// Where a ticket stands now (asking keeps it in the queue). A ticket the queue does not
    /// know (after a restart) takes its place again: the place is in the cookie.
    pub fn status(&self, now: i64, ticket: Ticket) -> Status {
        let Ok(mut q) = self.inner.lock() else {
            return Status::Admitted;
        };
        if q.passes.contains_key(&ticket) {
            return Status::Admitted;
        }
        q.waiting.insert(ticket, now);
        let waiting = q.waiting.len();
        let position = q
            .positions
            .get(&ticket)
            .copied()
            .unwrap_or(waiting)
            .min(waiting);
        Status::Waiting {
            position,
            waiting,
            wait_secs: self.wait_secs(&q, now, position) as i64,
        }
    }

    /// Seconds a sign-in refused now should wait before asking again (the API's Retry-After,
    /// which has no waiting page): long enough for everyone already waiting and itself to be
    /// hashed at the measured rate, at least 1 and at most `MAX_RETRY_AFTER_SECS`.
    pub fn retry_after(&self, now: i64) -> u64 {
        let Ok(q) = self.inner.lock() else {
            return 1;
        };
        let ahead = q.waiting.len() + q.passes.len() + 1;
        self.wait_secs(&q, now, ahead)
            .clamp(1, MAX_RETRY_AFTER_SECS)
    }

    /// Whole seconds for `sign_ins` sign-ins to go through at the measured rate.
    fn wait_secs(&self, q: &Inner, now: i64, sign_ins: usize) -> u64 {
        (sign_ins as f64 / self.rate(q, now)).ceil() as u64
    }

    /// Sign-ins a second, measured over the last minute once there are enough to measure.
    fn rate(&self, q: &Inner, now: i64) -> f64 {
        let since = now * 1000 - 60_000;
        let n = q.used.iter().filter(|&&t| t >= since).count();
        if n >= 20 {
            let first = q
                .used
                .iter()
                .copied()
                .find(|&t| t >= since)
                .unwrap_or(since);
            let span = ((now * 1000 - first) as f64 / 1000.0).max(1.0);
            n as f64 / span
        } else {
            self.nominal_rate
        }
    }

    /// Use a ticket's pass for one password attempt; false if it has none.
    pub fn use_pass(&self, now_ms: i64, ticket: Ticket) -> bool {
        let Ok(mut q) = self.inner.lock() else {
            return false;
        };
        if q.passes.remove(&ticket).is_none() {
            return false;
        }
        q.used.push_back(now_ms);
        while q.used.len() > 10_000 {
            q.used.pop_front();
        }
        true
    }

    /// One admitter pass: drop abandoned tickets and stale passes, let the front of the queue
    /// through into the free hashing places not already promised, and renumber the rest.
    /// Returns how many were admitted.
    pub fn tick(&self, now: i64, free_places: usize) -> usize {
        let Ok(mut q) = self.inner.lock() else {
            return 0;
        };
        q.waiting.retain(|_, seen| now - *seen <= ABANDON_SECS);
        q.passes.retain(|_, at| now - *at <= PASS_SECS);
        let room = free_places.saturating_sub(q.passes.len());
        let through: Vec<Ticket> = q.waiting.keys().take(room).copied().collect();
        for t in &through {
            q.waiting.remove(t);
            q.passes.insert(*t, now);
        }
        let positions = q
            .waiting
            .keys()
            .enumerate()
            .map(|(i, t)| (*t, i + 1))
            .collect();
        q.positions = positions;
        self.heartbeat.store(now, Ordering::Relaxed);
        metrics::gauge!("nca_sign_in_queue_waiting").set(q.waiting.len() as f64);
        through.len()
    }

    /// How many wait now.
    pub fn waiting(&self) -> usize {
        self.inner.lock().map(|q| q.waiting.len()).unwrap_or(0)
    }
}

/// Run the admitter four times a second for as long as the server runs.
pub fn spawn_admitter(state: crate::AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tick.tick().await;
            let free = state.gates.sign_ins.available_permits();
            state.queue.tick(state.clock.now(), free);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_720_500_000;

    #[test]
    fn the_queue_forms_only_when_hashing_is_full_or_others_wait() {
        let q = Queue::new(2);
        assert!(!q.must_queue(T0, 0, None), "no admitter yet: fails open");
        q.tick(T0, 10);
        assert!(!q.must_queue(T0, 10, None), "room to hash: no queue");
        assert!(q.must_queue(T0, 0, None), "no room: queue");
        let t = q.join(T0, None);
        assert!(
            q.must_queue(T0, 10, None),
            "others wait: newcomers queue behind them"
        );
        assert_eq!(q.tick(T0, 10), 1);
        assert!(!q.must_queue(T0, 10, Some(t)), "a pass goes straight in");
        assert_eq!(q.status(T0, t), Status::Admitted);
        assert!(q.use_pass(T0 * 1000, t));
        assert!(!q.use_pass(T0 * 1000, t), "a pass is good for one attempt");
    }

    #[test]
    fn within_a_window_the_order_is_a_lottery_and_asking_again_changes_nothing() {
        let q = Queue::new(2);
        q.tick(T0, 0);
        let tickets: Vec<Ticket> = (0..100)
            .map(|i| q.join(T0 + i % WINDOW_SECS.min(20), None))
            .collect();
        q.tick(T0 + 1, 0);
        let place = |t: Ticket| match q.status(T0 + 2, t) {
            Status::Waiting { position, .. } => position,
            Status::Admitted => 0,
        };
        let places: Vec<usize> = tickets.iter().map(|t| place(*t)).collect();
        let mut sorted = places.clone();
        sorted.sort();
        assert_eq!(sorted, (1..=100).collect::<Vec<_>>(), "every place once");
        assert_ne!(places, sorted, "arrival order is not queue order");
        // Refreshing a hundred times does not move anyone.
        for _ in 0..100 {
            assert_eq!(place(tickets[57]), places[57]);
        }
        // Someone arriving in a later window is behind everyone before them.
        let late = q.join(T0 + WINDOW_SECS * 2, None);
        q.tick(T0 + WINDOW_SECS * 2, 0);
        assert_eq!(place(late), 101);
    }

    #[test]
    fn the_front_goes_first_and_the_wait_is_the_place_over_the_measured_rate() {
        let q = Queue::new(1);
        q.tick(T0, 0);
        let a = q.join(T0, None);
        let b = q.join(T0 + WINDOW_SECS, None);
        let c = q.join(T0 + 2 * WINDOW_SECS, None);
        let now = T0 + 2 * WINDOW_SECS;
        // Two places free: the first two are let through; the third waits, first in line.
        assert_eq!(q.tick(now, 2), 2);
        assert_eq!(q.status(now, a), Status::Admitted);
        assert_eq!(q.status(now, b), Status::Admitted);
        let Status::Waiting {
            position,
            wait_secs,
            ..
        } = q.status(now, c)
        else {
            panic!("c waits");
        };
        assert_eq!(position, 1);
        assert_eq!(wait_secs, 1, "nominal 50 a second before any are measured");
        // Promised places are not handed out twice.
        assert_eq!(q.tick(now, 2), 0);
        // Measured: 30 sign-ins over 60 seconds is one every 2 seconds.
        let q = Queue::new(1);
        for i in 0..30 {
            let t = q.join(now, None);
            q.tick(now, 1000);
            assert!(q.use_pass((now - 60) * 1000 + i * 2000, t));
        }
        let waiting: Vec<Ticket> = (0..10).map(|_| q.join(now + 1, None)).collect();
        q.tick(now + 1, 0);
        let last = waiting
            .iter()
            .map(|t| q.status(now + 1, *t))
            .filter_map(|s| match s {
                Status::Waiting {
                    position,
                    wait_secs,
                    ..
                } => Some((position, wait_secs)),
                Status::Admitted => None,
            })
            .max()
            .unwrap();
        assert_eq!(last.0, 10, "the last of ten");
        assert!((20..=24).contains(&last.1), "about 2 s each: {last:?}");
    }

    #[test]
    fn a_refused_api_sign_in_is_told_to_wait_for_everyone_ahead() {
        let q = Queue::new(1);
        q.tick(T0, 0);
        assert_eq!(q.retry_after(T0), 1, "nobody ahead: ask again in a second");
        for _ in 0..499 {
            q.join(T0, None);
        }
        // 500 (499 waiting and itself) at the nominal 50 a second.
        assert_eq!(q.retry_after(T0), 10);
        for _ in 0..5000 {
            q.join(T0, None);
        }
        assert_eq!(q.retry_after(T0), MAX_RETRY_AFTER_SECS, "capped");
    }

    #[test]
    fn abandoned_tickets_leave_and_old_tickets_are_reissued() {
        let q = Queue::new(1);
        q.tick(T0, 0);
        let gone = q.join(T0, None);
        let stays = q.join(T0 + WINDOW_SECS, None);
        q.tick(T0 + ABANDON_SECS, 0);
        q.status(T0 + ABANDON_SECS, stays);
        q.tick(T0 + ABANDON_SECS + 10, 0);
        assert_eq!(q.waiting(), 1, "the ticket that stopped asking left");
        assert!(matches!(
            q.status(T0 + ABANDON_SECS + 10, stays),
            Status::Waiting { position: 1, .. }
        ));
        let _ = gone;
        let old = Ticket {
            window: T0 / WINDOW_SECS,
            draw: 0,
        };
        let renewed = q.join(T0 + TICKET_MAX_AGE_SECS + WINDOW_SECS * 2, Some(old));
        assert_ne!(renewed, old, "a stale ticket is no advantage");
        assert_eq!(
            q.join(T0 + 60, Some(old)),
            old,
            "a current one keeps its place"
        );
    }

    #[test]
    fn a_stopped_admitter_fails_open() {
        let q = Queue::new(1);
        q.tick(T0, 0);
        q.join(T0, None);
        assert!(q.must_queue(T0 + 1, 0, None));
        assert!(
            !q.must_queue(T0 + HEARTBEAT_SECS + 1, 0, None),
            "no heartbeat: open"
        );
    }
}
