//! `PySet<T>`: a hash set whose iteration order is exactly CPython 3.11's
//! `set` order for elements with the same Python hashes, after the same
//! sequence of operations.
//!
//! The scheduler's tie-breaking and message order depend on the order in
//! which Python iterates its sets, so this mirrors `Objects/setobject.c`
//! (3.11) table layout: open addressing with `LINEAR_PROBES` consecutive
//! slots then perturbed probing, dummy (deleted) slots, the `fill`/`used`
//! growth rule, `set_merge`'s copy shortcuts, and `set_pop`'s finger.
//!
//! Elements are small `Copy + Eq` values (ids); the caller supplies each
//! element's Python `hash()` (never -1) and must always pass the same hash
//! for the same element.
//!
//! In-place operations cannot alias in Rust; CPython's `s |= s` is a no-op
//! and `s -= s` is `s.clear()`.
//!
//! Memory: `size_of::<PySet<u32>>() == 16` (so is `Option<PySet<u32>>`). A set whose
//! table is CPython's 8-slot smalltable with at most one element in it (the common case
//! for a task's sets) owns no heap memory: the element, its slot, the dummy slots and
//! the pop finger are kept inline. Otherwise the table is `mask + 1` entries of 16 bytes
//! (for `T = u32`), exactly as many slots as CPython uses, behind one pointer with the
//! set's counters.

use std::fmt;
use std::iter::FusedIterator;

const LINEAR_PROBES: usize = 9;
const PERTURB_SHIFT: u32 = 5;
const MINSIZE: usize = 8;
/// Hash stored in deleted slots; no live element has it (CPython maps -1 to -2).
const DUMMY_HASH: i64 = -1;

/// A set element: a small id with one value no element takes, which marks a slot
/// that holds none.
pub trait SetKey: Copy + Eq {
    const VACANT: Self;
}

impl SetKey for u32 {
    const VACANT: Self = u32::MAX;
}

impl SetKey for i64 {
    const VACANT: Self = i64::MIN;
}

/// One heap-table slot: 12 bytes for a 4-byte key (packed: the hash is read unaligned).
/// `key == VACANT` is empty (hash 0) or a dummy (hash -1).
#[repr(C, packed(4))]
struct Entry<T> {
    hash: i64,
    key: T,
}

impl<T: Copy> Clone for Entry<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Copy> Copy for Entry<T> {}

impl<T: SetKey> Entry<T> {
    const EMPTY: Self = Entry {
        hash: 0,
        key: T::VACANT,
    };
    const DUMMY: Self = Entry {
        hash: DUMMY_HASH,
        key: T::VACANT,
    };

    /// The element in this slot, if any.
    #[inline]
    fn key(&self) -> Option<T> {
        let key = self.key;
        (key != T::VACANT).then_some(key)
    }
}

/// The smalltable slot of an inline set's one element. An enum, so that its unused
/// values hold `Table`'s tag (and `Option<PySet>`'s).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Slot {
    S0,
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    S7,
}

impl Slot {
    const ALL: [Slot; MINSIZE] = [
        Slot::S0,
        Slot::S1,
        Slot::S2,
        Slot::S3,
        Slot::S4,
        Slot::S5,
        Slot::S6,
        Slot::S7,
    ];

    /// The first probe of `hash` in the smalltable.
    #[inline]
    fn of(i: usize) -> Slot {
        Self::ALL[i & (MINSIZE - 1)]
    }

    #[inline]
    fn idx(self) -> usize {
        self as usize
    }
}

/// A table on the heap with the set's counters: CPython's `fill` (active plus dummy
/// slots), `used` (the length) and `finger` (`set_pop`'s search start, which survives
/// resizes and `clear`).
struct HeapTable<T> {
    fill: u32,
    used: u32,
    finger: u32,
    slots: Box<[Entry<T>]>,
}

impl<T: Copy> Clone for HeapTable<T> {
    fn clone(&self) -> Self {
        HeapTable {
            slots: self.slots.clone(),
            ..*self
        }
    }
}

/// A set's table. CPython's 8-slot smalltable holding at most one element (with a pop
/// finger below 256) is kept inline, `dummies` being the bitmask of its deleted slots:
/// most task sets hold one task. Anything else is on the heap.
enum Table<T> {
    Empty {
        dummies: u8,
        finger: u8,
    },
    One {
        hash: i64,
        key: T,
        slot: Slot,
        dummies: u8,
        finger: u8,
    },
    Heap(Box<HeapTable<T>>),
}

impl<T: Copy> Clone for Table<T> {
    fn clone(&self) -> Self {
        match self {
            Table::Empty { dummies, finger } => Table::Empty {
                dummies: *dummies,
                finger: *finger,
            },
            Table::One {
                hash,
                key,
                slot,
                dummies,
                finger,
            } => Table::One {
                hash: *hash,
                key: *key,
                slot: *slot,
                dummies: *dummies,
                finger: *finger,
            },
            Table::Heap(h) => Table::Heap(h.clone()),
        }
    }
}

impl<T: SetKey> Table<T> {
    const EMPTY: Self = Table::Empty {
        dummies: 0,
        finger: 0,
    };

    /// An empty smalltable with this pop finger.
    fn empty_with_finger(finger: u32) -> Self {
        match u8::try_from(finger) {
            Ok(finger) => Table::Empty { dummies: 0, finger },
            Err(_) => Table::Heap(Box::new(HeapTable {
                fill: 0,
                used: 0,
                finger,
                slots: new_table(MINSIZE).into_boxed_slice(),
            })),
        }
    }

    /// An inline table's 8 slots, laid out.
    fn small_slots(&self) -> [Entry<T>; MINSIZE] {
        let mut slots = [Entry::EMPTY; MINSIZE];
        let (dummies, one) = match self {
            Table::Empty { dummies, .. } => (*dummies, None),
            Table::One {
                hash,
                key,
                slot,
                dummies,
                ..
            } => (*dummies, Some((*slot, *key, *hash))),
            Table::Heap(_) => return slots,
        };
        for (i, e) in slots.iter_mut().enumerate() {
            if dummies & (1 << i) != 0 {
                *e = Entry::DUMMY;
            }
        }
        if let Some((slot, key, hash)) = one {
            slots[slot.idx()] = Entry { hash, key };
        }
        slots
    }

    /// `slots` as an inline table, if they are a smalltable with at most one element
    /// and the finger fits.
    fn inline(slots: &[Entry<T>], finger: u32) -> Option<Self> {
        let finger = u8::try_from(finger).ok()?;
        if slots.len() != MINSIZE {
            return None;
        }
        let mut dummies = 0u8;
        let mut one = None;
        for (i, e) in slots.iter().enumerate() {
            match e.key() {
                Some(_) if one.is_some() => return None,
                Some(k) => one = Some((Slot::ALL[i], k, e.hash)),
                None if e.hash == DUMMY_HASH => dummies |= 1 << i,
                None => {}
            }
        }
        Some(match one {
            Some((slot, key, hash)) => Table::One {
                hash,
                key,
                slot,
                dummies,
                finger,
            },
            None => Table::Empty { dummies, finger },
        })
    }

    /// `slots` with the set's counters as a table: inline when it can be.
    fn build(slots: Vec<Entry<T>>, fill: u32, used: u32, finger: u32) -> Self {
        if used <= 1 {
            if let Some(t) = Self::inline(&slots, finger) {
                return t;
            }
        }
        Table::Heap(Box::new(HeapTable {
            fill,
            used,
            finger,
            slots: slots.into_boxed_slice(),
        }))
    }

    /// Counters as (fill, used, finger).
    #[inline]
    fn counts(&self) -> (u32, u32, u32) {
        match self {
            Table::Empty { dummies, finger } => (dummies.count_ones(), 0, u32::from(*finger)),
            Table::One {
                dummies, finger, ..
            } => (1 + dummies.count_ones(), 1, u32::from(*finger)),
            Table::Heap(h) => (h.fill, h.used, h.finger),
        }
    }

    /// This table with another set's pop finger.
    fn with_finger(self, finger: u32) -> Self {
        match (self, u8::try_from(finger)) {
            (Table::Heap(mut h), _) => {
                h.finger = finger;
                Table::Heap(h)
            }
            (Table::Empty { dummies, .. }, Ok(finger)) => Table::Empty { dummies, finger },
            (
                Table::One {
                    hash,
                    key,
                    slot,
                    dummies,
                    ..
                },
                Ok(finger),
            ) => Table::One {
                hash,
                key,
                slot,
                dummies,
                finger,
            },
            // a finger too large to keep inline keeps the table on the heap
            (small, Err(_)) => {
                let (fill, used, _) = small.counts();
                Table::Heap(Box::new(HeapTable {
                    fill,
                    used,
                    finger,
                    slots: Box::new(small.small_slots()),
                }))
            }
        }
    }
}

/// Where `place` put an element.
#[derive(PartialEq)]
enum Placed {
    Present,
    /// In a dummy slot: `fill` is unchanged.
    Dummy,
    /// In an empty slot.
    Empty,
}

/// `set_add_entry`'s probe: puts `item` into `table` unless it is there.
fn place<T: SetKey>(table: &mut [Entry<T>], item: T, hash: i64) -> Placed {
    let mask = table.len() - 1;
    let mut perturb = hash as usize;
    let mut i = hash as usize & mask;
    // 3.11 reuses the LAST dummy on the probe path (it overwrites
    // `freeslot` at every dummy), not the first one.
    let mut freeslot: Option<usize> = None;
    let slot = 'probe: loop {
        let end = if i + LINEAR_PROBES <= mask {
            i + LINEAR_PROBES
        } else {
            i
        };
        for (j, e) in table[i..=end].iter().enumerate() {
            match e.key() {
                Some(k) if e.hash == hash && k == item => return Placed::Present,
                Some(_) => {}
                None if e.hash != DUMMY_HASH => break 'probe i + j,
                None => freeslot = Some(i + j),
            }
        }
        i = next_probe(i, &mut perturb, mask);
    };
    let placed = match freeslot {
        Some(f) => {
            table[f] = Entry { hash, key: item };
            return Placed::Dummy;
        }
        None => Placed::Empty,
    };
    table[slot] = Entry { hash, key: item };
    placed
}

/// Set with CPython 3.11 `set` iteration order. See the module docs.
pub struct PySet<T> {
    table: Table<T>,
}

impl<T: Copy> Clone for PySet<T> {
    fn clone(&self) -> Self {
        PySet {
            table: self.table.clone(),
        }
    }
}

impl<T: SetKey> Default for PySet<T> {
    fn default() -> Self {
        PySet {
            table: Table::EMPTY,
        }
    }
}

#[inline]
fn new_table<T: SetKey>(size: usize) -> Vec<Entry<T>> {
    vec![Entry::EMPTY; size]
}

/// Next probe start after a run of linear probes (`size_t` arithmetic).
#[inline]
fn next_probe(i: usize, perturb: &mut usize, mask: usize) -> usize {
    *perturb >>= PERTURB_SHIFT;
    i.wrapping_mul(5).wrapping_add(1).wrapping_add(*perturb) & mask
}

/// `set_insert_clean`: place a key known to be absent into a dummy-free table.
fn insert_clean<T: SetKey>(table: &mut [Entry<T>], key: T, hash: i64) {
    let mask = table.len() - 1;
    let mut perturb = hash as usize;
    let mut i = hash as usize & mask;
    loop {
        let end = if i + LINEAR_PROBES <= mask {
            i + LINEAR_PROBES
        } else {
            i
        };
        for e in &mut table[i..=end] {
            if e.key().is_none() {
                *e = Entry { hash, key };
                return;
            }
        }
        i = next_probe(i, &mut perturb, mask);
    }
}

/// The iteration order of a fresh set after inserting `items` (distinct elements) in
/// order, written to `out`; up to four elements stay in CPython's 8-slot smalltable,
/// which is laid out here without allocating.
pub fn insertion_order<T: SetKey>(items: &[(T, i64)], out: &mut Vec<T>) {
    if items.len() <= 1 {
        out.extend(items.iter().map(|&(k, _)| k));
        return;
    }
    if items.len() <= 4 {
        // fill stays below 5, so no resize; mask 7 leaves no room for linear probes
        let mut slots: [Option<T>; MINSIZE] = [None; MINSIZE];
        for &(k, h) in items {
            let mut perturb = h as usize;
            let mut i = h as usize & (MINSIZE - 1);
            while slots[i].is_some() {
                i = next_probe(i, &mut perturb, MINSIZE - 1);
            }
            slots[i] = Some(k);
        }
        out.extend(slots.iter().flatten().copied());
        return;
    }
    let mut s = PySet::new();
    for &(k, h) in items {
        s.insert(k, h);
    }
    out.extend(s.iter());
}

/// `set_table_resize`'s table size: the smallest power of two (>= 8) above `minused`.
#[inline]
pub(crate) fn table_size_for(minused: usize) -> usize {
    let mut size = MINSIZE;
    while size <= minused {
        size <<= 1;
    }
    size
}

/// Growth/shrink target used by `set_add_entry` and `set_difference_update`.
#[inline]
pub(crate) fn grow_target(used: usize) -> usize {
    if used > 50000 {
        used * 2
    } else {
        used * 4
    }
}

impl<T: SetKey> PySet<T> {
    /// Empty set (no allocation), like `set()`.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of elements.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.table {
            Table::Empty { .. } => 0,
            Table::One { .. } => 1,
            Table::Heap(h) => h.used as usize,
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn mask(&self) -> usize {
        match &self.table {
            Table::Heap(h) => h.slots.len() - 1,
            _ => MINSIZE - 1,
        }
    }

    #[inline]
    fn finger(&self) -> u32 {
        self.table.counts().2
    }

    /// A smalltable left with at most one element goes back inline.
    #[inline]
    fn compact(&mut self) {
        if let Table::Heap(h) = &self.table {
            if h.used <= 1 && h.slots.len() == MINSIZE {
                if let Some(t) = Table::inline(&h.slots, h.finger) {
                    self.table = t;
                }
            }
        }
    }

    /// `set_lookkey`: index of the active slot holding `item`, if any.
    #[inline]
    fn find(&self, item: T, hash: i64) -> Option<usize> {
        let table = match &self.table {
            Table::Empty { .. } => return None,
            Table::One {
                hash: h, key, slot, ..
            } => return (*key == item && *h == hash).then_some(slot.idx()),
            Table::Heap(h) => &h.slots,
        };
        let mask = table.len() - 1;
        let mut perturb = hash as usize;
        let mut i = hash as usize & mask;
        loop {
            let end = if i + LINEAR_PROBES <= mask {
                i + LINEAR_PROBES
            } else {
                i
            };
            for (j, e) in table[i..=end].iter().enumerate() {
                match e.key() {
                    Some(k) if e.hash == hash && k == item => return Some(i + j),
                    Some(_) => {}
                    None if e.hash != DUMMY_HASH => return None,
                    None => {}
                }
            }
            i = next_probe(i, &mut perturb, mask);
        }
    }

    /// Slots in the table minus one (CPython's `mask`; 7 for the smalltable).
    #[inline]
    pub fn table_mask(&self) -> usize {
        self.mask()
    }

    /// Active plus dummy slots (CPython's `fill`).
    #[inline]
    pub fn fill(&self) -> usize {
        self.table.counts().0 as usize
    }

    /// A dummy-free table of `mask + 1` slots holding `items` placed in this order by
    /// `set_insert_clean` (how `set_table_resize` and `set_merge` rebuild a table).
    pub fn from_clean_inserts<I: IntoIterator<Item = (T, i64)>>(mask: usize, items: I) -> Self {
        let mut table = new_table(mask + 1);
        let mut used = 0;
        for (k, h) in items {
            insert_clean(&mut table, k, h);
            used += 1;
        }
        PySet {
            table: Table::build(table, used, used, 0),
        }
    }

    /// Membership test (`item in s`).
    #[inline]
    pub fn contains(&self, item: T, hash: i64) -> bool {
        self.find(item, hash).is_some()
    }

    /// `s.add(item)` (`set_add_entry`). Returns true if newly inserted.
    pub fn insert(&mut self, item: T, hash: i64) -> bool {
        let placed = match &mut self.table {
            Table::Heap(h) => place(&mut h.slots, item, hash),
            &mut Table::Empty { dummies: 0, finger } => {
                // the empty smalltable: no probing
                self.table = Table::One {
                    hash,
                    key: item,
                    slot: Slot::of(hash as usize),
                    dummies: 0,
                    finger,
                };
                return true;
            }
            small => {
                let mut slots = small.small_slots();
                let placed = place(&mut slots, item, hash);
                if placed != Placed::Present {
                    let (fill, used, finger) = small.counts();
                    self.table = Table::Heap(Box::new(HeapTable {
                        fill,
                        used,
                        finger,
                        slots: Box::new(slots),
                    }));
                }
                placed
            }
        };
        let Table::Heap(h) = &mut self.table else {
            return false; // `Present`: an inline table is left as it was
        };
        match placed {
            Placed::Present => return false,
            Placed::Dummy => h.used += 1,
            Placed::Empty => {
                h.used += 1;
                h.fill += 1;
                if (h.fill as usize) * 5 >= (h.slots.len() - 1) * 3 {
                    let used = h.used as usize;
                    self.resize(grow_target(used));
                }
            }
        }
        self.compact();
        true
    }

    /// `s.discard(item)` (`set_discard_entry`): leaves a dummy, never
    /// resizes. Returns true if the item was present.
    pub fn remove(&mut self, item: T, hash: i64) -> bool {
        match self.find(item, hash) {
            Some(idx) => {
                self.kill(idx);
                true
            }
            None => false,
        }
    }

    /// Turns the active slot `idx` into a dummy.
    #[inline]
    fn kill(&mut self, idx: usize) {
        match &mut self.table {
            &mut Table::One {
                dummies, finger, ..
            } => {
                self.table = Table::Empty {
                    dummies: dummies | 1 << idx,
                    finger,
                };
            }
            Table::Heap(h) => {
                h.slots[idx] = Entry::DUMMY;
                h.used -= 1;
                self.compact();
            }
            Table::Empty { .. } => {}
        }
    }

    /// `s.clear()`: back to the empty 8-slot table; the pop finger is kept.
    pub fn clear(&mut self) {
        self.table = Table::empty_with_finger(self.finger());
    }

    /// `s.pop()`: scans from the finger for the first active slot.
    pub fn pop(&mut self) -> Option<T> {
        let (i, key) = match &mut self.table {
            Table::Empty { .. } => return None,
            Table::One {
                slot, key, finger, ..
            } => {
                // the only active slot
                let i = slot.idx();
                *finger = (i + 1) as u8;
                (i, *key)
            }
            Table::Heap(h) => {
                if h.used == 0 {
                    return None;
                }
                let mask = h.slots.len() - 1;
                let mut i = h.finger as usize & mask;
                let key = loop {
                    if let Some(k) = h.slots[i].key() {
                        break k;
                    }
                    i = if i == mask { 0 } else { i + 1 };
                };
                h.finger = (i + 1) as u32;
                (i, key)
            }
        };
        self.kill(i);
        Some(key)
    }

    /// `set_table_resize`: rebuild into the smallest power-of-two table
    /// (>= 8) larger than `minused`, dropping dummies.
    fn resize(&mut self, minused: usize) {
        let newsize = table_size_for(minused);
        let (fill, used, finger) = self.table.counts();
        // Staying in the smalltable with no dummies is a no-op in CPython.
        if newsize == MINSIZE && self.mask() == MINSIZE - 1 && fill == used {
            return;
        }
        let old = std::mem::replace(&mut self.table, Table::EMPTY);
        if newsize == MINSIZE && used == 0 {
            // the empty smalltable needs no allocation
            self.table = Table::empty_with_finger(finger);
            return;
        }
        let mut table = new_table(newsize);
        match &old {
            Table::Empty { .. } => {}
            Table::One { hash, key, .. } => insert_clean(&mut table, *key, *hash),
            Table::Heap(h) => {
                for e in h.slots.iter() {
                    if let Some(k) = e.key() {
                        insert_clean(&mut table, k, e.hash);
                    }
                }
            }
        }
        self.table = Table::build(table, used, used, finger);
    }

    /// `set_merge`: `self |= other` for a distinct set.
    fn merge(&mut self, other: &Self) {
        let oused = other.len();
        if oused == 0 {
            return;
        }
        if (self.fill() + oused) * 5 >= self.mask() * 3 {
            self.resize((self.len() + oused) * 2);
        }
        if self.fill() == 0 {
            let finger = self.finger();
            let table = if self.mask() == other.mask() && other.fill() == oused {
                // Same size, no dummies: CPython copies the layout verbatim.
                other.table.clone()
            } else {
                // no element and no dummy: a fresh table of the same size
                let mut table = new_table(self.mask() + 1);
                for (k, h) in other.iter_hashed() {
                    insert_clean(&mut table, k, h);
                }
                Table::build(table, oused as u32, oused as u32, 0)
            };
            self.table = table.with_finger(finger);
            self.compact();
            return;
        }
        for (k, h) in other.iter_hashed() {
            self.insert(k, h);
        }
    }

    /// `s.copy()` / `set(s)` / `frozenset(s)`.
    pub fn copy(&self) -> Self {
        let mut r = Self::new();
        r.merge(self);
        r
    }

    /// `{x for x in items}` / `set(list_of_items)`: inserts in order.
    pub fn from_iter_hashed<I: IntoIterator<Item = (T, i64)>>(items: I) -> Self {
        let mut r = Self::new();
        r.extend_hashed(items);
        r
    }

    /// `s.update(non_set_iterable)`: inserts in order.
    pub fn extend_hashed<I: IntoIterator<Item = (T, i64)>>(&mut self, items: I) {
        for (k, h) in items {
            self.insert(k, h);
        }
    }

    /// `s | t` / `s.union(t)`.
    pub fn union(&self, other: &Self) -> Self {
        let mut r = self.copy();
        if !std::ptr::eq(self, other) {
            r.merge(other);
        }
        r
    }

    /// `s |= t` / `s.update(t)`.
    pub fn update(&mut self, other: &Self) {
        self.merge(other);
    }

    /// `s & t` / `s.intersection(t)`: iterates the smaller set (`other` on
    /// ties) and inserts its common elements into a fresh set.
    pub fn intersection(&self, other: &Self) -> Self {
        if std::ptr::eq(self, other) {
            return self.copy();
        }
        let (probe, scan) = if other.len() > self.len() {
            (other, self)
        } else {
            (self, other)
        };
        let mut r = Self::new();
        for (k, h) in scan.iter_hashed() {
            if probe.contains(k, h) {
                r.insert(k, h);
            }
        }
        r
    }

    /// `s &= t` / `s.intersection_update(t)`: takes the table of `s & t`
    /// (`set_swap_bodies`), keeping this set's pop finger.
    pub fn intersection_update(&mut self, other: &Self) {
        let r = self.intersection(other);
        self.table = r.table.with_finger(self.finger());
        self.compact();
    }

    /// `s - t` / `s.difference(t)`.
    pub fn difference(&self, other: &Self) -> Self {
        if (self.len() >> 2) > other.len() {
            // Much larger than `other`: copy, then discard (may shrink).
            let mut r = self.copy();
            r.difference_update(other);
            return r;
        }
        let mut r = Self::new();
        for (k, h) in self.iter_hashed() {
            if !other.contains(k, h) {
                r.insert(k, h);
            }
        }
        r
    }

    /// `s -= t` / `s.difference_update(t)`: discards, then rebuilds if more
    /// than a quarter of the slots are dummies.
    pub fn difference_update(&mut self, other: &Self) {
        if !self.is_empty() && !other.is_empty() {
            if other.len() > self.len() {
                // Discard order does not affect the layout, so scan the smaller.
                match &mut self.table {
                    &mut Table::One {
                        hash,
                        key,
                        slot,
                        dummies,
                        finger,
                    } => {
                        if other.contains(key, hash) {
                            self.table = Table::Empty {
                                dummies: dummies | 1 << slot.idx(),
                                finger,
                            };
                        }
                    }
                    Table::Heap(h) => {
                        let mut removed = 0;
                        for e in h.slots.iter_mut() {
                            if let Some(k) = e.key() {
                                if other.contains(k, e.hash) {
                                    *e = Entry::DUMMY;
                                    removed += 1;
                                }
                            }
                        }
                        h.used -= removed;
                        self.compact();
                    }
                    Table::Empty { .. } => {}
                }
            } else {
                for (k, h) in other.iter_hashed() {
                    self.remove(k, h);
                }
            }
        }
        if self.fill() - self.len() > self.mask() / 4 {
            self.resize(grow_target(self.len()));
        }
    }

    /// Elements in CPython iteration order.
    #[inline]
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            inner: self.iter_hashed(),
        }
    }

    /// `(element, hash)` pairs in CPython iteration order.
    #[inline]
    pub fn iter_hashed(&self) -> IterHashed<'_, T> {
        match &self.table {
            Table::Heap(h) => IterHashed {
                slots: h.slots.iter(),
                one: None,
                left: h.used as usize,
            },
            Table::One { hash, key, .. } => IterHashed {
                slots: [].iter(),
                one: Some((*key, *hash)),
                left: 1,
            },
            Table::Empty { .. } => IterHashed {
                slots: [].iter(),
                one: None,
                left: 0,
            },
        }
    }
}

/// Iterator over `(element, hash)` in CPython order.
#[derive(Clone)]
pub struct IterHashed<'a, T> {
    slots: std::slice::Iter<'a, Entry<T>>,
    /// An inline set's element.
    one: Option<(T, i64)>,
    left: usize,
}

impl<T: SetKey> Iterator for IterHashed<'_, T> {
    type Item = (T, i64);

    #[inline]
    fn next(&mut self) -> Option<(T, i64)> {
        if self.left == 0 {
            return None;
        }
        if let Some(one) = self.one.take() {
            self.left -= 1;
            return Some(one);
        }
        for e in self.slots.by_ref() {
            if let Some(k) = e.key() {
                self.left -= 1;
                return Some((k, e.hash));
            }
        }
        None
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<T: SetKey> ExactSizeIterator for IterHashed<'_, T> {}
impl<T: SetKey> FusedIterator for IterHashed<'_, T> {}

/// Iterator over elements in CPython order.
#[derive(Clone)]
pub struct Iter<'a, T> {
    inner: IterHashed<'a, T>,
}

impl<T: SetKey> Iterator for Iter<'_, T> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        self.inner.next().map(|(k, _)| k)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<T: SetKey> ExactSizeIterator for Iter<'_, T> {}
impl<T: SetKey> FusedIterator for Iter<'_, T> {}

impl<'a, T: SetKey> IntoIterator for &'a PySet<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;

    #[inline]
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T: SetKey + fmt::Debug> fmt::Debug for PySet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// `if not s: s = set()`: an empty set (even an emptied one, whose table has grown) is
/// replaced by a fresh one, which iterates differently.
pub fn fresh_if_empty<T: SetKey>(s: &mut Option<PySet<T>>) -> &mut PySet<T> {
    if s.as_ref().is_none_or(|x| x.is_empty()) {
        *s = Some(PySet::new());
    }
    s.as_mut().expect("just set")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `tests/oracles/gen_pyset_cases.py` under CPython 3.11.
    const CASES: &str = include_str!("../../tests/oracles/pyset_cases.json");

    /// Minimal JSON value: the oracle file only holds integers, strings,
    /// arrays and objects.
    #[derive(Debug)]
    enum J {
        Num(i64),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    impl J {
        fn num(&self) -> i64 {
            match self {
                J::Num(n) => *n,
                other => panic!("expected number, got {other:?}"),
            }
        }
        fn id(&self) -> u32 {
            u32::try_from(self.num()).expect("element id")
        }
        fn idx(&self) -> usize {
            usize::try_from(self.num()).expect("index")
        }
        fn str(&self) -> &str {
            match self {
                J::Str(s) => s,
                other => panic!("expected string, got {other:?}"),
            }
        }
        fn arr(&self) -> &[J] {
            match self {
                J::Arr(a) => a,
                other => panic!("expected array, got {other:?}"),
            }
        }
        fn get(&self, key: &str) -> &J {
            match self {
                J::Obj(kv) => &kv.iter().find(|(k, _)| k == key).expect(key).1,
                other => panic!("expected object, got {other:?}"),
            }
        }
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.s[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
        }
        fn eat(&mut self, c: u8) -> bool {
            self.ws();
            let hit = self.s[self.i] == c;
            if hit {
                self.i += 1;
            }
            hit
        }
        fn list<R>(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> R) -> Vec<R> {
            let mut out = Vec::new();
            if self.eat(close) {
                return out;
            }
            loop {
                out.push(item(self));
                if self.eat(close) {
                    return out;
                }
                assert!(self.eat(b','), "expected ',' at byte {}", self.i);
            }
        }
        fn string(&mut self) -> String {
            assert!(self.eat(b'"'));
            let start = self.i;
            while self.s[self.i] != b'"' {
                assert_ne!(self.s[self.i], b'\\', "escapes unsupported");
                self.i += 1;
            }
            self.i += 1;
            String::from_utf8(self.s[start..self.i - 1].to_vec()).unwrap()
        }
        fn value(&mut self) -> J {
            self.ws();
            match self.s[self.i] {
                b'[' => {
                    self.i += 1;
                    J::Arr(self.list(b']', Self::value))
                }
                b'{' => {
                    self.i += 1;
                    J::Obj(self.list(b'}', |p| {
                        let k = p.string();
                        assert!(p.eat(b':'));
                        (k, p.value())
                    }))
                }
                b'"' => J::Str(self.string()),
                _ => {
                    let start = self.i;
                    self.i += 1;
                    while self.s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    let txt = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                    J::Num(txt.parse().unwrap_or_else(|_| panic!("bad number {txt}")))
                }
            }
        }
    }

    fn parse(text: &str) -> J {
        Parser {
            s: text.as_bytes(),
            i: 0,
        }
        .value()
    }

    /// Same as `fingerprint` in gen_pyset_cases.py.
    fn fingerprint(set: &PySet<u32>) -> i64 {
        const PRIME: u64 = 0x100000001b3;
        let mut h: u64 = 0xcbf29ce484222325;
        for x in set.iter().chain([set.len() as u32]) {
            h = (h ^ u64::from(x)).wrapping_mul(PRIME);
        }
        (((h >> 32) ^ h) & 0xff_ffff) as i64
    }

    fn replay(case: &J) -> usize {
        let name = case.get("name").str();
        let hashes: Vec<i64> = case.get("hashes").arr().iter().map(J::num).collect();
        let hashed = |xs: &J| -> Vec<(u32, i64)> {
            xs.arr().iter().map(|x| (x.id(), hashes[x.idx()])).collect()
        };
        let mut sets: Vec<PySet<u32>> =
            (0..case.get("nsets").idx()).map(|_| PySet::new()).collect();
        let ops = case.get("ops").arr();
        for (n, op) in ops.iter().enumerate() {
            let a = op.arr();
            let arg = |k: usize| a[k].idx();
            let (target, expect) = match a[0].str() {
                "add" => {
                    sets[arg(1)].insert(a[2].id(), hashes[arg(2)]);
                    (arg(1), a[3].num())
                }
                "dis" => {
                    sets[arg(1)].remove(a[2].id(), hashes[arg(2)]);
                    (arg(1), a[3].num())
                }
                "pop" => {
                    let got = sets[arg(1)].pop();
                    assert_eq!(got, Some(a[2].id()), "{name} op #{n} {a:?}: popped");
                    (arg(1), a[3].num())
                }
                "clr" => {
                    sets[arg(1)].clear();
                    (arg(1), a[2].num())
                }
                "has" => {
                    let got = sets[arg(1)].contains(a[2].id(), hashes[arg(2)]);
                    assert_eq!(got, a[3].num() == 1, "{name} op #{n} {a:?}");
                    continue;
                }
                "cpy" => {
                    sets[arg(1)] = sets[arg(2)].copy();
                    (arg(1), a[3].num())
                }
                "cmp" => {
                    sets[arg(1)] = PySet::from_iter_hashed(hashed(&a[2]));
                    (arg(1), a[3].num())
                }
                "upd" => {
                    sets[arg(1)].extend_hashed(hashed(&a[2]));
                    (arg(1), a[3].num())
                }
                code @ ("or" | "and" | "sub") => {
                    let (x, y) = (&sets[arg(2)], &sets[arg(3)]);
                    let r = match code {
                        "or" => x.union(y),
                        "and" => x.intersection(y),
                        _ => x.difference(y),
                    };
                    sets[arg(1)] = r;
                    (arg(1), a[4].num())
                }
                code @ ("ior" | "iand" | "isub") => {
                    let other = sets[arg(2)].clone();
                    let s = &mut sets[arg(1)];
                    match code {
                        "ior" => s.update(&other),
                        "iand" => s.intersection_update(&other),
                        _ => s.difference_update(&other),
                    }
                    (arg(1), a[3].num())
                }
                code => panic!("unknown op {code}"),
            };
            let s = &sets[target];
            assert_eq!(
                fingerprint(s),
                expect,
                "{name} op #{n} {a:?}: order {:?}",
                s.iter().collect::<Vec<_>>()
            );
        }
        for (k, want) in case.get("final").arr().iter().enumerate() {
            let want: Vec<u32> = want.arr().iter().map(J::id).collect();
            let got: Vec<u32> = sets[k].iter().collect();
            assert_eq!(got, want, "{name}: final order of set {k}");
            let pairs: Vec<(u32, i64)> = sets[k].iter_hashed().collect();
            assert!(pairs.iter().all(|&(x, h)| hashes[x as usize] == h));
        }
        ops.len()
    }

    #[test]
    fn matches_cpython_oracle() {
        let root = parse(CASES);
        let cases = root.get("cases").arr();
        assert!(cases.len() >= 10);
        let total: usize = cases.iter().map(replay).sum();
        assert!(total > 5000, "only {total} ops replayed");
    }

    #[test]
    fn layout_and_basics() {
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<PySet<u32>>(), 16);
            assert_eq!(std::mem::size_of::<Option<PySet<u32>>>(), 16);
        }
        let mut s: PySet<u32> = PySet::default();
        let inline_empty = |s: &PySet<u32>| matches!(s.table, Table::Empty { .. });
        assert!(inline_empty(&s) && s.is_empty() && s.pop().is_none());
        // {8, 1, 16}: 8 and 16 both start at slot 0; 16 probes on to slot 3.
        for x in [8, 1, 16] {
            assert!(s.insert(x, i64::from(x)));
        }
        assert!(!s.insert(1, 1));
        assert_eq!(s.iter().collect::<Vec<_>>(), [8, 1, 16]);
        assert_eq!(format!("{s:?}"), "{8, 1, 16}");
        assert!(s.contains(16, 16) && !s.contains(2, 2));
        assert!(s.remove(8, 8) && !s.remove(8, 8));
        assert_eq!((s.len(), s.fill()), (2, 3));
        assert_eq!(s.pop(), Some(1));
        assert!(
            matches!(s.table, Table::One { .. }),
            "one element left: inline"
        );
        s.clear();
        assert!(inline_empty(&s) && s.is_empty());
        assert_eq!(s.finger(), 2, "clear keeps the pop finger");
        let c = PySet::from_iter_hashed([(7u32, -7), (9, i64::MIN), (3, i64::MAX)]);
        assert_eq!(
            c.clone().iter().collect::<Vec<_>>(),
            c.iter().collect::<Vec<_>>()
        );
        assert_eq!((&c).into_iter().len(), 3);
    }

    /// A pop finger too large to keep inline keeps the table on the heap, and it
    /// survives `clear` and the growth that follows, as in CPython.
    #[test]
    fn large_finger_survives_clear() {
        let mut s: PySet<u32> = PySet::new();
        for x in 0..400u32 {
            s.insert(x, i64::from(x));
        }
        for _ in 0..300 {
            s.pop();
        }
        let finger = s.finger();
        assert!(finger > 255);
        s.clear();
        assert_eq!(s.finger(), finger);
        assert!(s.is_empty() && s.fill() == 0 && s.table_mask() == 7);
        s.insert(5, 5);
        assert_eq!(s.finger(), finger);
        for x in 0..600u32 {
            s.insert(x, i64::from(x));
        }
        let mask = s.table_mask() as u32;
        let start = finger & mask;
        assert_eq!(s.pop(), Some(start), "pop starts at finger & mask");
    }

    /// `insertion_order` lays small sets out as inserting them one by one does.
    #[test]
    fn insertion_order_matches_inserts() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for len in 0..12usize {
            for _ in 0..200 {
                let mut items: Vec<(u32, i64)> = Vec::new();
                while items.len() < len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = (x % 1000) as u32;
                    if items.iter().all(|&(o, _)| o != k) {
                        // hashes with few low bits set collide in small tables
                        items.push((k, (x >> 20) as i64 & 0x3f_ffff));
                    }
                }
                let mut got = Vec::new();
                insertion_order(&items, &mut got);
                let mut s = PySet::new();
                for &(k, h) in &items {
                    s.insert(k, h);
                }
                assert_eq!(got, s.iter().collect::<Vec<_>>());
            }
        }
    }
}
