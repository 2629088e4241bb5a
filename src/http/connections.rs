//! The open connections of one listener, so that it can ask them to close: all of them when
//! the server drains, and the idle ones that have waited longest when every connection slot
//! is taken and someone new is knocking (as nginx reuses keep-alive connections when it runs
//! short of `worker_connections`).
//!
//! Invariants: a connection is in the table from its accept until its task ends (the
//! [`Registered`] guard removes it, whatever way the task ends); asking a connection to close
//! is always safe, because hyper's graceful shutdown finishes the request in flight and closes
//! only between requests; a connection with a request in flight is never picked as idle.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// One open connection, as the table sees it.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Requests being answered now.
    in_flight: AtomicU32,
    /// When a request last finished (or the connection was accepted), in milliseconds since
    /// the table was made. Only idle connections' times are compared, so a request's start
    /// need not be recorded (one clock read a request, not two).
    last_active_ms: AtomicU64,
    /// Set once it has been asked to close.
    closing: AtomicBool,
    /// Wakes the connection's task to close gracefully (a stored permit, so a request to
    /// close made before the task waits is not lost).
    close: Notify,
    epoch: Instant,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Mark a request started; the guard marks it finished when dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves once the connection has been asked to close.
    pub(crate) async fn asked_to_close(&self) {
        self.close.notified().await
    }

    fn ask_to_close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close.notify_one();
    }
}

/// A request in flight on a connection (see [`Conn::busy`]).
pub(crate) struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .last_active_ms
            .store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The table of one listener's open connections.
#[derive(Debug)]
pub(crate) struct Connections {
    open: Mutex<foldhash::HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    epoch: Instant,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// A connection's place in the table, given up when dropped.
pub(crate) struct Registered {
    table: Arc<Connections>,
    id: u64,
    pub(crate) conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table
            .open
            .lock()
            .expect("connection table lock")
            .remove(&self.id);
    }
}

impl Connections {
    /// Put a newly accepted connection in the table.
    pub(crate) fn register(self: &Arc<Self>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicU32::new(0),
            last_active_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            epoch: self.epoch,
        });
        self.open
            .lock()
            .expect("connection table lock")
            .insert(id, conn.clone());
        Registered {
            table: self.clone(),
            id,
            conn,
        }
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.lock().expect("connection table lock").len()
    }

    /// Ask up to `n` idle connections to close, those idle longest first; returns how many
    /// were asked. A connection counts as idle when no request is in flight on it and it has
    /// not already been asked.
    pub(crate) fn reclaim_idle(&self, n: usize) -> usize {
        let open = self.open.lock().expect("connection table lock");
        let mut idle: Vec<(u64, &Arc<Conn>)> = open
            .values()
            .filter(|c| {
                c.in_flight.load(Ordering::Relaxed) == 0 && !c.closing.load(Ordering::Relaxed)
            })
            .map(|c| (c.last_active_ms.load(Ordering::Relaxed), c))
            .collect();
        let n = n.min(idle.len());
        if n == 0 {
            return 0;
        }
        if n < idle.len() {
            idle.select_nth_unstable_by_key(n - 1, |(at, _)| *at);
        }
        for (_, c) in &idle[..n] {
            c.ask_to_close();
        }
        n
    }

    /// Ask every connection to close (the server is draining).
    pub(crate) fn close_all(&self) {
        for c in self.open.lock().expect("connection table lock").values() {
            c.ask_to_close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reclaims_the_longest_idle_and_never_a_busy_connection() {
        let table = Arc::new(Connections::default());
        let a = table.register();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let b = table.register();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let c = table.register();
        // `a` is the oldest but busy; `b` is the idle one that has waited longest.
        let busy = a.conn.busy();
        assert_eq!(table.reclaim_idle(1), 1);
        assert!(b.conn.closing.load(Ordering::Relaxed));
        assert!(!a.conn.closing.load(Ordering::Relaxed));
        assert!(!c.conn.closing.load(Ordering::Relaxed));
        // The request to close is stored until the connection's task waits for it.
        tokio::time::timeout(std::time::Duration::from_secs(1), b.conn.asked_to_close())
            .await
            .expect("b was asked to close");
        // `b` is not asked twice; `c` is next; `a` stays while busy.
        assert_eq!(table.reclaim_idle(5), 1);
        assert!(c.conn.closing.load(Ordering::Relaxed));
        assert_eq!(table.reclaim_idle(5), 0);
        drop(busy);
        assert_eq!(table.reclaim_idle(5), 1);
        assert!(a.conn.closing.load(Ordering::Relaxed));
        // Dropping a registration takes it out of the table.
        assert_eq!(table.len(), 3);
        drop((a, b, c));
        assert_eq!(table.len(), 0);
        let d = table.register();
        let busy = d.conn.busy();
        table.close_all();
        tokio::time::timeout(std::time::Duration::from_secs(1), d.conn.asked_to_close())
            .await
            .expect("close_all reaches busy connections too");
        drop(busy);
    }
}
