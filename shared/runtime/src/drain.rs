//! Graceful shutdown signal: once raised, connections finish the request in
//! hand, then close.
//!
//! Each worker gets its own `Drain`, so the waiter list below is only ever
//! touched by that worker's thread (plus once by whoever starts the drain):
//! an idle connection parks on `signaled()` without a timer and without a
//! lock shared between cores.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Clone, Default, Debug)]
pub struct Drain(Arc<Inner>);

#[derive(Default, Debug)]
struct Inner {
    draining: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// A small slab of parked wakers: `Signaled` futures keep their slot so that
/// being polled again (e.g. inside a `select!`) replaces instead of piling up.
#[derive(Default, Debug)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Waiters {
    fn insert(&mut self, waker: Waker) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = Some(waker);
                key
            }
            None => {
                self.slots.push(Some(waker));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key) {
            if slot.take().is_some() {
                self.free.push(key);
            }
        }
    }
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the signal and wakes every connection parked on `signaled()`.
    /// Idempotent.
    pub fn start(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = {
            let mut waiters = lock(&self.0.waiters);
            waiters.free.clear();
            waiters.slots.drain(..).flatten().collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }

    /// Resolves once draining started; for idle connections to select on.
    pub fn signaled(&self) -> Signaled<'_> {
        Signaled {
            drain: self,
            key: None,
        }
    }
}

/// Never panics on a poisoned lock: the waiter list stays usable because every
/// critical section leaves it consistent.
fn lock(m: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Future returned by [`Drain::signaled`].
#[must_use = "futures do nothing unless awaited"]
pub struct Signaled<'a> {
    drain: &'a Drain,
    key: Option<usize>,
}

impl Future for Signaled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.is_draining() {
            return Poll::Ready(());
        }
        let inner = &self.drain.0;
        {
            let mut waiters = lock(&inner.waiters);
            match self.key {
                Some(key) => match waiters.slots.get_mut(key) {
                    Some(Some(w)) if w.will_wake(cx.waker()) => {}
                    Some(slot @ Some(_)) => *slot = Some(cx.waker().clone()),
                    // The slot was emptied by `start()`, which set the flag first.
                    _ => return Poll::Ready(()),
                },
                None => {
                    let key = waiters.insert(cx.waker().clone());
                    drop(waiters);
                    self.key = Some(key);
                }
            }
        }
        // `start()` may have run between the first check and the insert.
        if inner.draining.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Signaled<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if !self.drain.is_draining() {
                lock(&self.drain.0.waiters).remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn signaled_resolves_after_start_from_another_thread() {
        let drain = Drain::new();
        let remote = drain.clone();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let starter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            remote.start();
        });
        rt.block_on(async {
            assert!(!drain.is_draining());
            drain.signaled().await;
            assert!(drain.is_draining());
        });
        starter.join().unwrap();
    }

    #[test]
    fn dropped_waiters_free_their_slot() {
        let drain = Drain::new();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..100 {
                monoio::select! {
                    _ = drain.signaled() => panic!("not draining"),
                    _ = monoio::time::sleep(Duration::from_millis(1)) => {}
                }
            }
        });
        let waiters = lock(&drain.0.waiters);
        assert!(
            waiters.slots.len() <= 1,
            "slots grew to {}",
            waiters.slots.len()
        );
        assert!(waiters.slots.iter().all(Option::is_none));
    }
}
