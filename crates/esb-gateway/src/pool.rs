//! The pool logic of one function, independent of what a worker is: capacity, idle warm
//! workers (most recently used first), and a fair FIFO of waiting requests.
//!
//! A request gets either a warm idle worker or the right to create one (while fewer than
//! `capacity` exist); otherwise it waits in line. A released worker goes to the first
//! waiter; a discarded worker's place does too.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// What a request got from the pool.
#[derive(Debug)]
pub enum Grant<W> {
    /// A warm idle worker.
    Warm(W),
    /// Permission to create a worker (its place is counted already).
    Create,
}

/// Why no worker was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    /// The pool stayed full for the whole wait.
    Timeout,
    /// The pool is shutting down.
    Closed,
}

struct Inner<W> {
    idle: Vec<(W, Instant)>,
    total: usize,
    waiters: VecDeque<oneshot::Sender<Grant<W>>>,
    closed: bool,
}

/// The pool core.
pub struct PoolCore<W> {
    capacity: usize,
    inner: Mutex<Inner<W>>,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Idle warm workers.
    pub idle: usize,
    /// All workers, including busy and being created.
    pub total: usize,
    /// Requests waiting.
    pub waiting: usize,
}

impl<W> PoolCore<W> {
    /// A pool of at most `capacity` workers (at least 1).
    pub fn new(capacity: usize) -> PoolCore<W> {
        PoolCore {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                idle: Vec::new(),
                total: 0,
                waiters: VecDeque::new(),
                closed: false,
            }),
        }
    }

    /// Most workers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Gets a worker or the right to create one, waiting up to `wait`.
    pub async fn acquire(&self, wait: Duration) -> Result<Grant<W>, AcquireError> {
        let mut rx = {
            let mut g = self.inner.lock().unwrap();
            if g.closed {
                return Err(AcquireError::Closed);
            }
            if let Some((w, _)) = g.idle.pop() {
                return Ok(Grant::Warm(w));
            }
            if g.total < self.capacity {
                g.total += 1;
                return Ok(Grant::Create);
            }
            let (tx, rx) = oneshot::channel();
            g.waiters.push_back(tx);
            rx
        };
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(grant)) => Ok(grant),
            Ok(Err(_)) => Err(AcquireError::Closed),
            Err(_) => {
                // A grant may have been sent just now: take it rather than lose it.
                rx.close();
                rx.try_recv().map_err(|_| AcquireError::Timeout)
            }
        }
    }

    /// Tries to get a warm worker or a creation right without waiting.
    pub fn try_acquire(&self) -> Option<Grant<W>> {
        let mut g = self.inner.lock().unwrap();
        if g.closed {
            return None;
        }
        if let Some((w, _)) = g.idle.pop() {
            return Some(Grant::Warm(w));
        }
        if g.total < self.capacity {
            g.total += 1;
            return Some(Grant::Create);
        }
        None
    }

    /// Reserves a place to create a worker outside of any request (provisioning), when
    /// fewer than `target` exist.
    pub fn reserve_below(&self, target: usize) -> bool {
        let mut g = self.inner.lock().unwrap();
        if g.closed || g.total >= target.min(self.capacity) {
            return false;
        }
        g.total += 1;
        true
    }

    /// Returns a healthy worker: to the first waiter, or to the idle list.
    pub fn release(&self, mut w: W) -> Option<W> {
        let mut g = self.inner.lock().unwrap();
        if g.closed {
            g.total -= 1;
            return Some(w);
        }
        while let Some(tx) = g.waiters.pop_front() {
            match tx.send(Grant::Warm(w)) {
                Ok(()) => return None,
                Err(Grant::Warm(back)) => w = back,
                Err(Grant::Create) => unreachable!(),
            }
        }
        g.idle.push((w, Instant::now()));
        None
    }

    /// Gives up a worker's place (the worker failed, was destroyed or never got created);
    /// the first waiter may create one instead.
    pub fn discard(&self) {
        let mut g = self.inner.lock().unwrap();
        g.total -= 1;
        if g.closed {
            return;
        }
        while let Some(tx) = g.waiters.pop_front() {
            g.total += 1;
            if tx.send(Grant::Create).is_ok() {
                return;
            }
            g.total -= 1;
        }
    }

    /// Removes idle workers unused since before `cutoff`, oldest first, keeping at least
    /// `keep` workers in total; their places are freed.
    pub fn reap_idle(&self, cutoff: Instant, keep: usize) -> Vec<W> {
        let mut g = self.inner.lock().unwrap();
        let mut out = Vec::new();
        // idle is ordered by release time: oldest first.
        while g.total > keep && g.idle.first().is_some_and(|(_, t)| *t < cutoff) {
            let (w, _) = g.idle.remove(0);
            g.total -= 1;
            out.push(w);
        }
        out
    }

    /// Takes out the idle workers unused since before `cutoff` that `pred` selects (the
    /// ones to pause), each with when it was last released. Their places stay counted:
    /// the caller holds them as if leased, and gives each back with
    /// [`PoolCore::restore`] (or frees its place with [`PoolCore::discard`]). While out,
    /// no request can be given them.
    pub fn take_idle_before(
        &self,
        cutoff: Instant,
        mut pred: impl FnMut(&W) -> bool,
    ) -> Vec<(W, Instant)> {
        let mut g = self.inner.lock().unwrap();
        let mut out = Vec::new();
        let mut i = 0;
        // idle is ordered by release time: oldest first.
        while i < g.idle.len() && g.idle[i].1 < cutoff {
            if pred(&g.idle[i].0) {
                out.push(g.idle.remove(i));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Gives back a worker taken with [`PoolCore::take_idle_before`], keeping the time it
    /// was last released (its idle time goes on counting towards scale-down): to the first
    /// waiter, or to its place in the idle list. A closed pool hands it back, its place
    /// freed, as [`PoolCore::release`] does.
    pub fn restore(&self, mut w: W, since: Instant) -> Option<W> {
        let mut g = self.inner.lock().unwrap();
        if g.closed {
            g.total -= 1;
            return Some(w);
        }
        while let Some(tx) = g.waiters.pop_front() {
            match tx.send(Grant::Warm(w)) {
                Ok(()) => return None,
                Err(Grant::Warm(back)) => w = back,
                Err(Grant::Create) => unreachable!(),
            }
        }
        let at = g.idle.partition_point(|(_, t)| *t <= since);
        g.idle.insert(at, (w, since));
        None
    }

    /// Removes the idle workers `pred` selects (e.g. those of a node that went down).
    pub fn remove_idle_where(&self, mut pred: impl FnMut(&W) -> bool) -> Vec<W> {
        let mut g = self.inner.lock().unwrap();
        let mut out = Vec::new();
        let mut i = 0;
        while i < g.idle.len() {
            if pred(&g.idle[i].0) {
                out.push(g.idle.remove(i).0);
                g.total -= 1;
            } else {
                i += 1;
            }
        }
        out
    }

    /// Visits the idle workers.
    pub fn for_each_idle(&self, mut f: impl FnMut(&W)) {
        for (w, _) in &self.inner.lock().unwrap().idle {
            f(w)
        }
    }

    /// Closes the pool: waiters fail, idle workers are returned for destruction; workers
    /// released later are handed back by [`PoolCore::release`].
    pub fn close(&self) -> Vec<W> {
        let mut g = self.inner.lock().unwrap();
        g.closed = true;
        g.waiters.clear();
        let idle: Vec<W> = g.idle.drain(..).map(|(w, _)| w).collect();
        g.total -= idle.len();
        idle
    }

    /// Current counts.
    pub fn stats(&self) -> PoolStats {
        let g = self.inner.lock().unwrap();
        PoolStats {
            idle: g.idle.len(),
            total: g.total,
            waiting: g.waiters.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn warm<W: std::fmt::Debug>(g: Grant<W>) -> W {
        match g {
            Grant::Warm(w) => w,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn warm_reuse_before_create() {
        let p = PoolCore::new(2);
        assert!(matches!(p.acquire(Duration::ZERO).await, Ok(Grant::Create)));
        p.release(1u32);
        // The idle worker is reused, not a new one created.
        assert_eq!(warm(p.acquire(Duration::ZERO).await.unwrap()), 1);
        assert!(matches!(p.acquire(Duration::ZERO).await, Ok(Grant::Create)));
        assert_eq!(p.stats().total, 2);
        assert_eq!(
            p.acquire(Duration::from_millis(10)).await.unwrap_err(),
            AcquireError::Timeout
        );
    }

    #[tokio::test]
    async fn waiters_are_served_in_order() {
        let p = Arc::new(PoolCore::new(1));
        assert!(matches!(p.try_acquire(), Some(Grant::Create)));
        let mut handles = Vec::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..5u32 {
            let (p2, order) = (p.clone(), order.clone());
            handles.push(tokio::spawn(async move {
                let w = warm(p2.acquire(Duration::from_secs(60)).await.unwrap());
                order.lock().unwrap().push(i);
                p2.release(w);
            }));
            // Let each task queue up before the next.
            while p.stats().waiting <= i as usize {
                tokio::task::yield_now().await;
            }
        }
        p.release(7u32);
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(
            p.stats(),
            PoolStats {
                idle: 1,
                total: 1,
                waiting: 0
            }
        );
    }

    #[tokio::test]
    async fn discard_passes_the_place_on() {
        let p = Arc::new(PoolCore::<u32>::new(1));
        assert!(matches!(p.try_acquire(), Some(Grant::Create)));
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.acquire(Duration::from_secs(60)).await });
        while p.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        p.discard();
        assert!(matches!(waiter.await.unwrap(), Ok(Grant::Create)));
        assert_eq!(p.stats().total, 1);
        // A timed-out waiter does not swallow the place.
        let r = p.acquire(Duration::from_millis(5)).await;
        assert_eq!(r.unwrap_err(), AcquireError::Timeout);
        p.discard();
        assert_eq!(p.stats().total, 0);
    }

    #[tokio::test]
    async fn taken_workers_are_not_granted_until_restored() {
        let p = Arc::new(PoolCore::new(1));
        assert!(matches!(p.try_acquire(), Some(Grant::Create)));
        p.release(1u32);
        let later = Instant::now() + Duration::from_secs(1);
        // Not selected: stays idle.
        assert!(p.take_idle_before(later, |_| false).is_empty());
        let taken = p.take_idle_before(later, |_| true);
        assert_eq!(taken.len(), 1);
        let (w, since) = taken.into_iter().next().unwrap();
        // Out of the pool but counted: a request waits rather than gets it or creates one.
        assert_eq!(
            p.stats(),
            PoolStats {
                idle: 0,
                total: 1,
                waiting: 0
            }
        );
        assert!(p.try_acquire().is_none());
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.acquire(Duration::from_secs(60)).await });
        while p.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        // Restored: it goes to the waiter.
        assert!(p.restore(w, since).is_none());
        assert_eq!(warm(waiter.await.unwrap().unwrap()), 1);
        // Restored without waiters: back in its place by release time, the oldest first.
        let t0 = Instant::now();
        p.release(1);
        let (w, since) = p.take_idle_before(later, |_| true).pop().unwrap();
        assert!(since >= t0);
        let p3 = PoolCore::new(3);
        for _ in 0..3 {
            assert!(p3.reserve_below(3));
        }
        p3.release(10u32);
        std::thread::sleep(Duration::from_millis(2));
        p3.release(11u32);
        let (ten, t10) = p3.take_idle_before(later, |w| *w == 10).pop().unwrap();
        p3.release(12u32);
        assert!(p3.restore(ten, t10).is_none());
        // 10 was released first: it is reaped first and handed out last.
        assert_eq!(p3.reap_idle(t10 + Duration::from_nanos(1), 0), vec![10]);
        assert_eq!(warm(p3.try_acquire().unwrap()), 12);
        // A closed pool hands a restored worker back and frees its place.
        assert!(p.close().is_empty());
        assert_eq!(p.restore(w, since), Some(1));
        assert_eq!(p.stats().total, 0);
    }

    #[tokio::test]
    async fn reap_keeps_provisioned_and_close() {
        let p = PoolCore::new(4);
        for _ in 0..3 {
            assert!(p.reserve_below(3));
        }
        assert!(!p.reserve_below(3));
        for w in 0..3u32 {
            p.release(w);
        }
        let later = Instant::now() + Duration::from_secs(1);
        let reaped = p.reap_idle(later, 1);
        assert_eq!(reaped, vec![0, 1]);
        assert_eq!(p.stats().total, 1);
        assert!(p
            .reap_idle(Instant::now() - Duration::from_secs(5), 0)
            .is_empty());
        assert_eq!(p.remove_idle_where(|w| *w == 2), vec![2]);
        assert_eq!(p.stats().total, 0);
        assert!(matches!(p.try_acquire(), Some(Grant::Create)));
        assert!(p.close().is_empty());
        assert_eq!(p.release(9), Some(9));
        assert_eq!(p.stats().total, 0);
        assert_eq!(
            p.acquire(Duration::ZERO).await.unwrap_err(),
            AcquireError::Closed
        );
    }
}
