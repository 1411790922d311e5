//! `StateCell`: the engine's state behind a borrow flag that a running stimulus can lend.
//! Plain Rust (no Python): the bindings turn `Busy` into a `RuntimeError`.
//!
//! distributed calls `SchedulerPlugin.transition` inside `_transition`, between one
//! transition and the next, and plugins read (and sometimes change) the scheduler there.
//! The core calls back with `&mut State` at that point; the callback lends that borrow to
//! the handles and views of the same thread until Python returns, so they read and write
//! the state the core is suspended on. Borrows are checked at run time: a conflicting
//! one is a `RuntimeError`, never aliasing.

use std::cell::{RefCell, UnsafeCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicIsize, Ordering};

/// An exclusive borrow open on this thread, innermost last.
struct Lend {
    cell: *const (),
    /// The state the borrow's holder may hand to the core.
    state: *mut (),
    /// Whether the core has lent it (it is suspended in a callback).
    lent: bool,
    /// Borrows taken through the lend: > 0 shared, -1 exclusive.
    borrows: isize,
}

thread_local! {
    static LENDS: RefCell<Vec<Lend>> = const { RefCell::new(Vec::new()) };
    /// The cells this thread holds shared borrows of (outside a lend), one entry each.
    static READS: RefCell<Vec<*const ()>> = const { RefCell::new(Vec::new()) };
}

pub(crate) struct StateCell<T> {
    value: UnsafeCell<T>,
    /// > 0: shared borrows, -1: borrowed exclusively (maybe lent), 0: free
    flag: AtomicIsize,
}

// SAFETY: access to `value` is guarded by `flag` (atomically, readers may share it as
// with a RwLock) or, while lent, by the lending thread's `Lend` entry, which no other
// thread can see.
unsafe impl<T: Send + Sync> Sync for StateCell<T> {}

/// A borrow that conflicts with one already open: another thread's (`elsewhere`: it
/// ends when that thread lets go, so the caller may wait for it), or one of this
/// thread's own outside a lend (waiting would never end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy {
    pub elsewhere: bool,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the scheduler engine is busy: its state is borrowed by a running stimulus")
    }
}

impl std::error::Error for Busy {}

impl<T> StateCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            value: UnsafeCell::new(value),
            flag: AtomicIsize::new(0),
        }
    }

    /// The value, for the engine's sole owner (garbage collection's `__clear__`).
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    fn id(&self) -> *const () {
        self as *const Self as *const ()
    }

    /// The innermost exclusive borrow of this cell on this thread, if it is lent.
    fn with_lend<R>(&self, f: impl FnOnce(&mut Lend) -> Option<R>) -> Option<R> {
        LENDS.with(|l| {
            // never contended: nothing that runs Python holds it
            let mut l = l.try_borrow_mut().ok()?;
            let lend = l.iter_mut().rev().find(|e| e.cell == self.id())?;
            if lend.lent {
                f(lend)
            } else {
                None
            }
        })
    }

    pub(crate) fn borrow(&self) -> Result<StateRef<'_, T>, Busy> {
        let mut n = self.flag.load(Ordering::Acquire);
        while n >= 0 {
            match self
                .flag
                .compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    READS.with(|r| r.borrow_mut().push(self.id()));
                    return Ok(StateRef {
                        cell: self,
                        value: self.value.get(),
                        lent: false,
                    });
                }
                Err(m) => n = m,
            }
        }
        let ptr = self.with_lend(|lend| {
            (lend.borrows >= 0).then(|| {
                lend.borrows += 1;
                lend.state as *mut T
            })
        });
        ptr.map(|value| StateRef {
            cell: self,
            value,
            lent: true,
        })
        .ok_or_else(|| self.busy())
    }

    /// Why a borrow was refused: whether a borrow of this thread's stands in the way.
    fn busy(&self) -> Busy {
        let id = self.id();
        let here = LENDS.with(|l| l.borrow().iter().any(|e| e.cell == id))
            || READS.with(|r| r.borrow().contains(&id));
        Busy { elsewhere: !here }
    }

    /// `borrow`, calling `wait()` while another thread holds a conflicting borrow, until
    /// `wait` gives up (returns false).
    pub(crate) fn borrow_waiting(
        &self,
        mut wait: impl FnMut() -> bool,
    ) -> Result<StateRef<'_, T>, Busy> {
        loop {
            match self.borrow() {
                Err(b) if b.elsewhere && wait() => continue,
                r => return r,
            }
        }
    }

    /// `borrow_mut`, waiting as `borrow_waiting` does.
    pub(crate) fn borrow_mut_waiting(
        &self,
        mut wait: impl FnMut() -> bool,
    ) -> Result<StateMut<'_, T>, Busy> {
        loop {
            match self.borrow_mut() {
                Err(b) if b.elsewhere && wait() => continue,
                r => return r,
            }
        }
    }

    pub(crate) fn borrow_mut(&self) -> Result<StateMut<'_, T>, Busy> {
        let lent = self
            .flag
            .compare_exchange(0, -1, Ordering::Acquire, Ordering::Relaxed)
            .is_err();
        let value = if !lent {
            self.value.get()
        } else {
            self.with_lend(|lend| {
                (lend.borrows == 0).then(|| {
                    lend.borrows = -1;
                    lend.state as *mut T
                })
            })
            .ok_or_else(|| self.busy())?
        };
        // a nested stimulus (from a plugin hook) can lend in turn
        LENDS.with(|l| {
            l.borrow_mut().push(Lend {
                cell: self.id(),
                state: value as *mut (),
                lent: false,
                borrows: 0,
            })
        });
        Ok(StateMut {
            cell: self,
            value,
            lent,
        })
    }

    /// Lends `state` (the core's borrow of this thread's innermost exclusive borrow of
    /// this cell) to the handles while `f` runs.
    pub(crate) fn lend<R>(state: &mut T, f: impl FnOnce() -> R) -> R {
        let ptr = state as *mut T as *mut ();
        let found = LENDS.with(|l| {
            let mut l = l.borrow_mut();
            match l.last_mut() {
                // the innermost exclusive borrow is the one the core runs under
                Some(lend) if !lend.lent && lend.state == ptr => {
                    // the reborrow the core handed out stands for the guard's own
                    lend.state = ptr;
                    lend.lent = true;
                    true
                }
                _ => false,
            }
        });
        let _restore = found.then_some(Unlend);
        f()
    }
}

/// Ends a lend (also when the callback panics).
struct Unlend;

impl Drop for Unlend {
    fn drop(&mut self) {
        LENDS.with(|l| {
            if let Some(lend) = l.borrow_mut().last_mut() {
                lend.lent = false;
            }
        });
    }
}

pub(crate) struct StateRef<'a, T> {
    cell: &'a StateCell<T>,
    value: *mut T,
    lent: bool,
}

impl<T> Deref for StateRef<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a shared borrow is registered for as long as this guard lives
        unsafe { &*self.value }
    }
}

impl<T> Drop for StateRef<'_, T> {
    fn drop(&mut self) {
        if self.lent {
            self.cell.with_lend(|lend| {
                lend.borrows -= 1;
                Some(())
            });
        } else {
            let id = self.cell.id();
            READS.with(|r| {
                let mut r = r.borrow_mut();
                if let Some(i) = r.iter().rposition(|c| *c == id) {
                    r.swap_remove(i);
                }
            });
            self.cell.flag.fetch_sub(1, Ordering::Release);
        }
    }
}

pub(crate) struct StateMut<'a, T> {
    cell: &'a StateCell<T>,
    value: *mut T,
    /// taken through an outer lend rather than the flag
    lent: bool,
}

impl<T> StateMut<'_, T> {
    /// Whether this borrow was taken through a lend (by a stimulus from a plugin hook).
    pub(crate) fn is_lent(&self) -> bool {
        self.lent
    }
}

impl<T> Deref for StateMut<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: an exclusive borrow is registered for as long as this guard lives
        unsafe { &*self.value }
    }
}

impl<T> DerefMut for StateMut<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above
        unsafe { &mut *self.value }
    }
}

impl<T> Drop for StateMut<'_, T> {
    fn drop(&mut self) {
        LENDS.with(|l| l.borrow_mut().pop());
        if self.lent {
            self.cell.with_lend(|lend| {
                lend.borrows = 0;
                Some(())
            });
        } else {
            self.cell.flag.store(0, Ordering::Release);
        }
    }
}
