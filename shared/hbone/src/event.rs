//! A one-shot, single-thread broadcast: many tasks wait, one `fire` wakes all.
//!
//! Used for "the connection being opened is ready" in the pool and for
//! "shutdown started" in the server. Everything here lives on one worker
//! thread, so `Cell`/`RefCell` suffice; waiters keep their slot so that being
//! polled again replaces their waker instead of piling up.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default, Debug)]
pub(crate) struct Event {
    fired: Cell<bool>,
    waiters: RefCell<Slots>,
}

#[derive(Default, Debug)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Event {
    pub(crate) fn fire(&self) {
        if self.fired.replace(true) {
            return;
        }
        let wakers: Vec<Waker> = {
            let mut slots = self.waiters.borrow_mut();
            slots.free.clear();
            slots.wakers.drain(..).flatten().collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once `fire` was called (immediately if it already was).
    pub(crate) fn wait(self: &Rc<Self>) -> Wait {
        Wait {
            event: self.clone(),
            slot: None,
        }
    }

    /// Poll form for hand-written state machines; the slot lives in `slot`.
    pub(crate) fn poll_wait(&self, cx: &mut Context<'_>, slot: &mut Option<usize>) -> Poll<()> {
        if self.fired.get() {
            return Poll::Ready(());
        }
        let mut slots = self.waiters.borrow_mut();
        match *slot {
            Some(key) if key < slots.wakers.len() => {
                slots.wakers[key] = Some(cx.waker().clone());
            }
            _ => {
                let waker = Some(cx.waker().clone());
                let key = match slots.free.pop() {
                    Some(key) => {
                        slots.wakers[key] = waker;
                        key
                    }
                    None => {
                        slots.wakers.push(waker);
                        slots.wakers.len() - 1
                    }
                };
                *slot = Some(key);
            }
        }
        Poll::Pending
    }

    pub(crate) fn forget(&self, slot: &mut Option<usize>) {
        if let Some(key) = slot.take() {
            if self.fired.get() {
                return;
            }
            let mut slots = self.waiters.borrow_mut();
            if let Some(entry) = slots.wakers.get_mut(key) {
                if entry.take().is_some() {
                    slots.free.push(key);
                }
            }
        }
    }
}

pub(crate) struct Wait {
    event: Rc<Event>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.event.poll_wait(cx, &mut this.slot)
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        self.event.forget(&mut self.slot);
    }
}
