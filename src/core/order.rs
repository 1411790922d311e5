//! `order`: the static priority dask gives every key of a graph (`dask.order.order`),
//! with the same result for every key.
//!
//! dask's result depends on the order in which CPython iterates several of its sets
//! (a key's dependents, the leaf and root sets, the data roots a task needs, and
//! `dependencies[key].difference(result)` while the critical path is built), and so on
//! the keys' Python hashes. Those sets are `PySet`s here, fed the same hashes in the
//! same sequence of operations. A key's `dependencies` frozenset comes from Python as
//! its iteration order and table size (`SetView`): that is all the operations dask
//! applies to it depend on.
//!
//! Everything else (the hulls, the degree buckets, the cached paths) is only tested for
//! membership, or is sorted by `sort_key` before use, so its order cannot matter.

use crate::core::pyset::{grow_target, insertion_order, table_size_for, PySet};
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::hash::BuildHasher;

/// The graph as dask sees it after `dsk = dict(dsk)`: ids `0..n_real` are the keys of
/// `dsk` in its order, then the keys only named as dependencies ("external" keys), in
/// the order `reverse_dict` first meets them.
pub struct OrderGraph<'a> {
    /// Python `hash(key)`.
    pub hashes: Vec<i64>,
    /// `istask(dsk[key])`: false for `DataNode`s and external keys.
    pub is_task: Vec<bool>,
    /// Each key's `dependencies` frozenset, in its iteration order (CSR).
    pub dep_offsets: Vec<u32>,
    pub dep_ids: Vec<u32>,
    /// The frozenset's table mask, for keys whose frozenset is not in the 8-slot
    /// smalltable.
    pub dep_masks: HashMap<u32, u32>,
    /// The frozenset's fill (active and deleted slots), where it has deleted slots.
    pub dep_fills: HashMap<u32, u32>,
    pub n_real: usize,
    /// `str(key)`, compared when everything else in `sort_key` ties.
    pub names: Vec<&'a str>,
}

impl OrderGraph<'_> {
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    fn deps(&self, k: u32) -> &[u32] {
        let k = k as usize;
        &self.dep_ids[self.dep_offsets[k] as usize..self.dep_offsets[k + 1] as usize]
    }

    fn deps_view(&self, k: u32) -> SetView<'_> {
        let items = self.deps(k);
        SetView {
            items,
            mask: self.dep_masks.get(&k).map_or(7, |&m| m as usize),
            fill: self.dep_fills.get(&k).map_or(items.len(), |&f| f as usize),
        }
    }
}

/// Why the Rust order did not produce a result; the caller then runs dask's own, which
/// raises its own error for a bad graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderError {
    /// `RuntimeError: Cycle detected ...` in dask.
    Cycle,
    /// Two different keys with the same `sort_key` (same `str`): dask keeps the one its
    /// set iterates first.
    AmbiguousTie,
    /// A path count beyond `u64`; dask uses Python ints.
    Overflow,
    /// A state dask would fail an `assert`, an `IndexError` or `ValueError` in.
    Inconsistent(&'static str),
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::Cycle => f.write_str("cycle"),
            OrderError::AmbiguousTie => f.write_str("two keys with the same sort key"),
            OrderError::Overflow => f.write_str("dependency count overflow"),
            OrderError::Inconsistent(what) => write!(f, "inconsistent graph: {what}"),
        }
    }
}

/// One key's priority: `priority` and, doubled, `critical_path` (dask offsets it by 0.5
/// inside `process_runnables`; -2 for the alias leaves it puts last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    pub key: u32,
    pub priority: i64,
    pub critical_path2: i64,
}

/// A set known by its iteration order, table mask and fill (active + dummy slots):
/// what `set_copy`, `difference` and iteration depend on.
#[derive(Clone, Copy)]
struct SetView<'a> {
    items: &'a [u32],
    mask: usize,
    fill: usize,
}

#[derive(Clone)]
struct OwnedSet {
    items: Vec<u32>,
    mask: usize,
    fill: usize,
}

impl OwnedSet {
    fn view(&self) -> SetView<'_> {
        SetView {
            items: &self.items,
            mask: self.mask,
            fill: self.fill,
        }
    }

    fn from_pyset(s: &PySet<u32>) -> Self {
        OwnedSet {
            items: s.iter().collect(),
            mask: s.table_mask(),
            fill: s.fill(),
        }
    }
}

fn table_mask_for(minused: usize) -> usize {
    table_size_for(minused) - 1
}

/// `s.difference(other)` for a set `other` of `other_len` items (a dict or a set),
/// `is_member` telling membership: CPython copies and discards when `s` is more than
/// four times larger, otherwise inserts the survivors into a fresh set.
fn difference(
    s: SetView<'_>,
    other_len: usize,
    is_member: impl Fn(u32) -> bool,
    hashes: &[i64],
) -> OwnedSet {
    let used = s.items.len();
    if (used >> 2) > other_len {
        // set_copy: `set_merge` into an empty 8-slot set.
        let mut mask = 7;
        if used * 5 >= 7 * 3 {
            mask = table_mask_for(used * 2);
        }
        let mut items: Vec<u32> = if mask == s.mask && s.fill == used {
            s.items.to_vec() // the layout is copied verbatim
        } else {
            clean_order(s.items.iter().copied(), mask, hashes)
        };
        let fill = used;
        items.retain(|&k| !is_member(k)); // discards leave dummies in place
        let now = items.len();
        if fill - now > mask / 4 {
            let mask = table_mask_for(grow_target(now));
            let items = clean_order(items.into_iter(), mask, hashes);
            return OwnedSet {
                items,
                mask,
                fill: now,
            };
        }
        return OwnedSet { items, mask, fill };
    }
    let survivors: SmallVec<[(u32, i64); 8]> = s
        .items
        .iter()
        .filter(|&&k| !is_member(k))
        .map(|&k| (k, hashes[k as usize]))
        .collect();
    if survivors.len() <= 4 {
        // a fresh set of up to four never leaves the 8-slot smalltable
        let mut items = Vec::with_capacity(survivors.len());
        insertion_order(&survivors, &mut items);
        let fill = items.len();
        return OwnedSet {
            items,
            mask: 7,
            fill,
        };
    }
    let mut r = PySet::new();
    for &(k, h) in &survivors {
        r.insert(k, h);
    }
    OwnedSet::from_pyset(&r)
}

/// The order of `items` after `set_insert_clean` into a table of `mask + 1` slots.
fn clean_order(items: impl Iterator<Item = u32>, mask: usize, hashes: &[i64]) -> Vec<u32> {
    PySet::from_clean_inserts(mask, items.map(|k| (k, hashes[k as usize])))
        .iter()
        .collect()
}

/// dask's `leafs_degree` (a leaf's degree) and `leafs_per_degree` (the leaves of each
/// degree) as intrusive lists: moving a leaf allocates nothing.
#[derive(Default)]
struct DegreeBuckets {
    degree: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    head: Vec<u32>,
    count: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl DegreeBuckets {
    fn new(keys: usize, degrees: usize) -> Self {
        DegreeBuckets {
            degree: vec![NONE; keys],
            next: vec![NONE; keys],
            prev: vec![NONE; keys],
            head: vec![NONE; degrees],
            count: vec![0; degrees],
        }
    }

    fn of(&self, leaf: u32) -> Option<usize> {
        let d = self.degree[leaf as usize];
        (d != NONE).then_some(d as usize)
    }

    fn len(&self, degree: usize) -> usize {
        self.count.get(degree).map_or(0, |&c| c as usize)
    }

    fn insert(&mut self, leaf: u32, degree: usize) {
        let l = leaf as usize;
        self.degree[l] = degree as u32;
        let old = self.head[degree];
        self.next[l] = old;
        self.prev[l] = NONE;
        if old != NONE {
            self.prev[old as usize] = leaf;
        }
        self.head[degree] = leaf;
        self.count[degree] += 1;
    }

    fn remove(&mut self, leaf: u32) -> Option<usize> {
        let degree = self.of(leaf)?;
        let l = leaf as usize;
        let (p, nx) = (self.prev[l], self.next[l]);
        if p == NONE {
            self.head[degree] = nx;
        } else {
            self.next[p as usize] = nx;
        }
        if nx != NONE {
            self.prev[nx as usize] = p;
        }
        self.degree[l] = NONE;
        self.count[degree] -= 1;
        Some(degree)
    }

    fn iter(&self, degree: usize) -> impl Iterator<Item = u32> + '_ {
        let mut at = self.head.get(degree).copied().unwrap_or(NONE);
        std::iter::from_fn(move || {
            (at != NONE).then(|| {
                let k = at;
                at = self.next[k as usize];
                k
            })
        })
    }
}

/// Roots (or, reversed, leaves) reachable from a key: sorted ids. Eight bytes, so that
/// a large graph's per-key vector stays in cache: a set of several is shared between
/// keys by its index in a [`Reaches`] pool.
#[derive(Clone, Copy)]
enum Reach {
    Empty,
    One(u32),
    Many(u32),
    /// The roots of a tree of keys, counted only (see `propagate`).
    Tree(u32),
}

impl Reach {
    /// The same shared set (dask compares the frozensets' ids).
    fn same(&self, other: &Reach) -> bool {
        match (self, other) {
            (Reach::Many(a), Reach::Many(b)) | (Reach::One(a), Reach::One(b)) => a == b,
            (Reach::Empty, Reach::Empty) => true,
            _ => false,
        }
    }
}

/// Every key's [`Reach`] (`None`: not computed), and the sets they share.
#[derive(Default)]
struct Reaches {
    of: Vec<Option<Reach>>,
    sets: Vec<Box<[u32]>>,
}

impl Reaches {
    /// The ids `of[k]` holds (none for a tree's count).
    fn slice(&self, k: u32) -> &[u32] {
        match &self.of[k as usize] {
            None | Some(Reach::Empty | Reach::Tree(_)) => &[],
            Some(Reach::One(x)) => std::slice::from_ref(x),
            Some(Reach::Many(i)) => &self.sets[*i as usize],
        }
    }

    /// How many ids `of[k]` stands for (0 when not computed).
    fn len(&self, k: u32) -> usize {
        match self.of[k as usize] {
            Some(Reach::Tree(count)) => count as usize,
            _ => self.slice(k).len(),
        }
    }
}

struct Orderer<'g> {
    g: &'g OrderGraph<'g>,
    stats: bool,
    n: usize,
    /// `dependencies[k]` once the alias leaves and data roots are gone, when it differs
    /// from the frozenset (`deps - removed` builds a new set). Empty when no key left the
    /// graph (nearly always): then the frozensets' own lists are read directly.
    deps_now: Vec<Option<OwnedSet>>,
    /// `dependents[k]` in its set's iteration order (CSR); deleted keys have none.
    dependents_off: Vec<u32>,
    dependents_ids: Vec<u32>,
    dependents_deleted: Vec<bool>,
    in_dsk: Vec<bool>,
    is_external: Vec<bool>,

    assigned: Vec<Assigned>,
    in_result: Vec<bool>,
    i: i64,
    crit_path_counter: i64,
    offset_half: bool,

    num_needed: Vec<u32>,
    total_dependencies: Vec<u64>,
    roots_connected_len: Vec<u32>,
    max_dependents: Vec<u32>,
    leafs_connected: Reaches,

    leaf_nodes: Vec<bool>,
    root_nodes: Vec<bool>,
    requires_data_task: HashMap<u32, PySet<u32>>,
    runnable_hull: Vec<bool>,
    /// `reachable_hull`: flags, a count, and the keys ever added (for iteration).
    in_reachable_hull: Vec<bool>,
    reachable_len: usize,
    reachable_added: Vec<u32>,
    runnable: Vec<u32>,
    known_runnable_paths: HashMap<u32, Vec<Vec<u32>>>,

    /// `leafs_degree` and `leafs_per_degree`.
    degrees: DegreeBuckets,
    min_leaf_degree: usize,
    max_leaf_degree: usize,
    leaf_nodes_sorted: Vec<u32>,
    critical_path: Vec<u32>,

    tie: bool,
    error: Option<OrderError>,
}

/// `dask.order.order(dsk)`: every key's priority, in the order dask assigns them.
pub fn order(g: &OrderGraph<'_>, return_stats: bool) -> Result<Vec<Assigned>, OrderError> {
    if g.n_real == 0 {
        return Ok(Vec::new());
    }
    let mut o = Orderer::new(g, return_stats);
    o.run()?;
    if o.tie {
        return Err(OrderError::AmbiguousTie);
    }
    if let Some(e) = o.error.take() {
        return Err(e);
    }
    let n_real = g.n_real as u32;
    o.assigned.retain(|a| a.key < n_real);
    Ok(o.assigned)
}

impl<'g> Orderer<'g> {
    fn new(g: &'g OrderGraph<'g>, stats: bool) -> Self {
        let n = g.len();
        Orderer {
            g,
            stats,
            n,
            deps_now: Vec::new(),
            dependents_off: Vec::new(),
            dependents_ids: Vec::new(),
            dependents_deleted: vec![false; n],
            in_dsk: vec![true; n],
            is_external: (0..n).map(|k| k >= g.n_real).collect(),
            assigned: Vec::with_capacity(n),
            in_result: vec![false; n],
            i: 0,
            crit_path_counter: 0,
            offset_half: false,
            num_needed: Vec::new(),
            total_dependencies: Vec::new(),
            roots_connected_len: Vec::new(),
            max_dependents: Vec::new(),
            leafs_connected: Reaches::default(),
            leaf_nodes: Vec::new(),
            root_nodes: Vec::new(),
            requires_data_task: HashMap::new(),
            runnable_hull: vec![false; n],
            in_reachable_hull: vec![false; n],
            reachable_len: 0,
            reachable_added: Vec::new(),
            runnable: Vec::new(),
            known_runnable_paths: HashMap::new(),
            degrees: DegreeBuckets::default(),
            min_leaf_degree: 0,
            max_leaf_degree: 0,
            leaf_nodes_sorted: Vec::new(),
            critical_path: Vec::new(),
            tie: false,
            error: None,
        }
    }

    #[inline]
    fn h(&self, k: u32) -> i64 {
        self.g.hashes[k as usize]
    }

    /// `dependents[k]` in its set's iteration order.
    #[inline]
    fn dependents_of(&self, k: u32) -> &[u32] {
        let k = k as usize;
        if self.dependents_deleted[k] {
            return &[];
        }
        &self.dependents_ids[self.dependents_off[k] as usize..self.dependents_off[k + 1] as usize]
    }

    fn hull_add(&mut self, k: u32) {
        if !std::mem::replace(&mut self.in_reachable_hull[k as usize], true) {
            self.reachable_len += 1;
            self.reachable_added.push(k);
        }
    }

    fn hull_discard(&mut self, k: u32) {
        if std::mem::replace(&mut self.in_reachable_hull[k as usize], false) {
            self.reachable_len -= 1;
            if self.reachable_added.len() > 64
                && self.reachable_added.len() > 4 * self.reachable_len
            {
                let flags = &self.in_reachable_hull;
                self.reachable_added.retain(|&x| flags[x as usize]);
                // a key added twice since the last compaction is listed twice
                self.reachable_added.sort_unstable();
                self.reachable_added.dedup();
            }
        }
    }

    /// `dependencies[k]` as dask's `DependenciesMapping` gives it now.
    #[inline]
    fn deps_items(&self, k: u32) -> &[u32] {
        match self.deps_now.get(k as usize) {
            Some(Some(s)) => &s.items,
            _ => self.g.deps(k),
        }
    }

    #[inline]
    fn deps_of(&self, k: u32) -> SetView<'_> {
        match self.deps_now.get(k as usize) {
            Some(Some(s)) => s.view(),
            _ => self.g.deps_view(k),
        }
    }

    fn assign(&mut self, key: u32, priority: i64, critical_path2: i64) {
        self.in_result[key as usize] = true;
        self.assigned.push(Assigned {
            key,
            priority,
            critical_path2: if self.stats { critical_path2 } else { 0 },
        });
    }

    /// `sort_key(a) < sort_key(b)` as a total order; a full tie of two different keys
    /// is flagged (dask would keep whichever its set iterated first).
    fn cmp_key(&mut self, a: u32, b: u32) -> Ordering {
        let c = self.cmp_key_pure(a, b);
        if c == Ordering::Equal && a != b {
            self.tie = true;
        }
        c
    }

    fn sort_by_key(&mut self, v: &mut [u32]) {
        v.sort_by(|&a, &b| self.cmp_key(a, b));
    }

    fn cmp_key_pure(&self, a: u32, b: u32) -> Ordering {
        let (x, y) = (a as usize, b as usize);
        self.total_dependencies[x]
            .cmp(&self.total_dependencies[y])
            .then_with(|| self.deps_items(a).len().cmp(&self.deps_items(b).len()))
            .then_with(|| self.roots_connected_len[x].cmp(&self.roots_connected_len[y]))
            .then_with(|| self.max_dependents[y].cmp(&self.max_dependents[x]))
            .then_with(|| self.g.names[x].cmp(self.g.names[y]))
    }

    /// Python's `max(items, key=sort_key)`: the first of the largest.
    fn max_by_key(&mut self, items: &[u32]) -> Option<u32> {
        let mut best: Option<u32> = None;
        for &k in items {
            best = match best {
                None => Some(k),
                Some(b) if self.cmp_key(k, b) == Ordering::Greater => Some(k),
                keep => keep,
            };
        }
        best
    }

    /// Python's `min(items, key=sort_key)`: the first of the smallest.
    fn min_by_key(&mut self, items: impl Iterator<Item = u32>) -> Option<u32> {
        let mut best: Option<u32> = None;
        for k in items {
            best = match best {
                None => Some(k),
                Some(b) if self.cmp_key(k, b) == Ordering::Less => Some(k),
                keep => keep,
            };
        }
        best
    }

    fn run(&mut self) -> Result<(), OrderError> {
        let g = self.g;
        let n = self.n;
        let expected_len = n;

        // dependents = reverse_dict(dependencies), and the order its dict meets keys
        self.build_dependents();

        // Only data roots (and external keys) with several dependents make dask's first
        // loop change the graph; the sets it iterates are built when one exists.
        let removal =
            (0..n as u32).any(|k| !g.is_task[k as usize] && self.dependents_of(k).len() > 1);
        let (leaf_list, root_count, root_set): (Vec<u32>, usize, Option<PySet<u32>>) = if removal {
            let mut leaf_nodes = PySet::new();
            for &k in &self.dependents_dict_order() {
                if self.dependents_of(k).is_empty() {
                    leaf_nodes.insert(k, self.h(k));
                }
            }
            let mut root_nodes = PySet::new();
            for k in 0..n as u32 {
                if g.deps(k).is_empty() {
                    root_nodes.insert(k, self.h(k));
                }
            }
            self.remove_aliases_and_data_roots(&mut leaf_nodes, &mut root_nodes)?;
            self.root_nodes = vec![false; n];
            for k in root_nodes.iter() {
                self.root_nodes[k as usize] = true;
            }
            (
                leaf_nodes.iter().collect(),
                root_nodes.len(),
                Some(root_nodes),
            )
        } else {
            self.root_nodes = (0..n as u32).map(|k| g.deps(k).is_empty()).collect();
            let leaves = (0..n as u32)
                .filter(|&k| self.dependents_of(k).is_empty())
                .collect();
            (leaves, self.root_nodes.iter().filter(|&&r| r).count(), None)
        };

        self.ndependencies()?;
        self.connecting_to_roots();

        self.leaf_nodes = vec![false; n];
        for &k in &leaf_list {
            self.leaf_nodes[k as usize] = true;
        }

        let dsk_len = self.in_dsk.iter().filter(|&&b| b).count();
        self.min_leaf_degree = dsk_len;
        self.max_leaf_degree = dsk_len;
        self.degrees = DegreeBuckets::new(n, dsk_len.max(n) + 1);
        for &leaf in &leaf_list {
            if self.root_nodes[leaf as usize] {
                continue;
            }
            let degree = self.roots_connected_len[leaf as usize] as usize;
            self.min_leaf_degree = self.min_leaf_degree.min(degree);
            self.max_leaf_degree = self.max_leaf_degree.max(degree);
            self.degrees.insert(leaf, degree);
        }

        let longest_path = self.use_longest_path(leaf_list.len(), root_count, root_set);
        let mut sorted: Vec<u32> = leaf_list;
        self.sort_by_key(&mut sorted);
        if !longest_path {
            // sorted(reverse=True) keeps equal keys in their order; keys never tie here
            sorted.reverse();
        }
        self.leaf_nodes_sorted = sorted;

        while self.assigned.len() < expected_len {
            if self.error.is_some() {
                return Ok(());
            }
            self.crit_path_counter += 1;
            debug_assert!(self.critical_path.is_empty());

            // A. Build the critical path
            let target = self.get_target()?;
            self.critical_path.push(target);
            let mut next_deps: Vec<u32> = self.deps_items(target).to_vec();
            while !next_deps.is_empty() {
                let item = self.max_by_key(&next_deps).expect("non-empty");
                self.critical_path.push(item);
                let result_len = self.assigned.len();
                let in_result = &self.in_result;
                next_deps = difference(
                    self.deps_of(item),
                    result_len,
                    |k| in_result[k as usize],
                    &g.hashes,
                )
                .items;
                self.critical_path.extend_from_slice(&next_deps);
            }

            // B. Walk the critical path
            let mut walked_back = false;
            while let Some(item) = self.critical_path.pop() {
                if self.in_result[item as usize] {
                    continue;
                }
                if self.num_needed[item as usize] != 0 {
                    self.critical_path.push(item);
                    let mut deps: Vec<u32> = self
                        .deps_items(item)
                        .iter()
                        .copied()
                        .filter(|&d| !self.in_result[d as usize])
                        .collect();
                    self.sort_by_key(&mut deps);
                    let (known, unknown): (Vec<u32>, Vec<u32>) = deps
                        .into_iter()
                        .partition(|d| self.known_runnable_paths.contains_key(d));
                    if unknown.len() > 1 {
                        walked_back = true;
                    }
                    self.critical_path.extend_from_slice(&unknown);
                    for d in known {
                        if let Some(paths) = self.known_runnable_paths.remove(&d) {
                            for path in paths {
                                self.critical_path.extend(path.iter().rev());
                            }
                        }
                    }
                    continue;
                }
                if walked_back && self.runnable.len() < self.critical_path.len() {
                    self.process_runnables();
                }
                self.add_to_result(item);
            }
            self.process_runnables();
        }
        if self.assigned.len() != expected_len {
            return Err(OrderError::Inconsistent("result size"));
        }
        Ok(())
    }

    /// `reverse_dict(dependencies)`: each key's dependents, inserted in `dsk` order,
    /// laid out in the order its set iterates them.
    fn build_dependents(&mut self) {
        let g = self.g;
        let n = self.n;
        let mut off = vec![0u32; n + 1];
        for &v in &g.dep_ids {
            off[v as usize + 1] += 1;
        }
        for i in 0..n {
            off[i + 1] += off[i];
        }
        let mut ids = vec![0u32; g.dep_ids.len()];
        let mut next: Vec<u32> = off[..n].to_vec();
        for k in 0..g.n_real as u32 {
            for &v in g.deps(k) {
                ids[next[v as usize] as usize] = k;
                next[v as usize] += 1;
            }
        }
        let mut hashed: Vec<(u32, i64)> = Vec::new();
        let mut ordered: Vec<u32> = Vec::new();
        for v in 0..n {
            let slice = &mut ids[off[v] as usize..off[v + 1] as usize];
            if slice.len() > 1 {
                hashed.clear();
                hashed.extend(slice.iter().map(|&k| (k, g.hashes[k as usize])));
                ordered.clear();
                insertion_order(&hashed, &mut ordered);
                slice.copy_from_slice(&ordered);
            }
        }
        self.dependents_off = off;
        self.dependents_ids = ids;
    }

    /// The order `reverse_dict`'s dict first meets keys: each key of `dsk`, then the
    /// dependencies it names.
    fn dependents_dict_order(&self) -> Vec<u32> {
        let mut seen = vec![false; self.n];
        let mut order = Vec::with_capacity(self.n);
        for k in 0..self.g.n_real as u32 {
            if !std::mem::replace(&mut seen[k as usize], true) {
                order.push(k);
            }
            for &v in self.g.deps(k) {
                if !std::mem::replace(&mut seen[v as usize], true) {
                    order.push(v);
                }
            }
        }
        order
    }

    /// dask's first loop: alias leaves (non-tasks with several dependencies) get the
    /// last priorities and leave the graph; data roots with several dependents leave it
    /// too and are run just before the first task that needs them.
    fn remove_aliases_and_data_roots(
        &mut self,
        leaf_nodes: &mut PySet<u32>,
        root_nodes: &mut PySet<u32>,
    ) -> Result<(), OrderError> {
        let g = self.g;
        let mut removed: PySet<u32> = PySet::new();
        let leaves: Vec<u32> = leaf_nodes.iter().collect();
        for leaf in leaves {
            if root_nodes.contains(leaf, self.h(leaf)) || g.is_task[leaf as usize] {
                continue;
            }
            if g.deps(leaf).len() > 1 {
                // a non-task with dependencies is a legacy graph's alias list; a
                // `GraphNode` graph has none (a `DataNode` depends on nothing)
                return Err(OrderError::Inconsistent("alias leaf"));
            }
        }
        // No leaf left the graph, so dask's loop runs once: the data roots with several
        // dependents leave it.
        let roots: Vec<u32> = root_nodes.iter().collect();
        for root in roots {
            if leaf_nodes.contains(root, self.h(root)) {
                continue;
            }
            if g.is_task[root as usize] || self.dependents_of(root).len() <= 1 {
                continue;
            }
            self.in_dsk[root as usize] = false;
            removed.insert(root, self.h(root));
            root_nodes.remove(root, self.h(root));
            let deps_root: Vec<u32> = self.dependents_of(root).to_vec();
            self.dependents_deleted[root as usize] = true;
            let root_hash = self.h(root);
            for dep in deps_root {
                self.requires_data_task
                    .entry(dep)
                    .or_default()
                    .insert(root, root_hash);
                if self.current_deps(dep, &removed).items.is_empty() {
                    root_nodes.insert(dep, self.h(dep));
                }
            }
        }
        if !removed.is_empty() {
            self.deps_now = vec![None; self.n];
            for k in 0..self.n as u32 {
                if self.in_dsk[k as usize] {
                    self.deps_now[k as usize] = Some(self.current_deps(k, &removed));
                }
            }
        }
        Ok(())
    }

    /// `DependenciesMapping[k]`: the frozenset, or `frozenset - removed` once any key
    /// was deleted.
    fn current_deps(&self, k: u32, removed: &PySet<u32>) -> OwnedSet {
        let view = self.g.deps_view(k);
        if removed.is_empty() {
            return OwnedSet {
                items: view.items.to_vec(),
                mask: view.mask,
                fill: view.fill,
            };
        }
        difference(
            view,
            removed.len(),
            |d| removed.contains(d, self.g.hashes[d as usize]),
            &self.g.hashes,
        )
    }

    fn alive_keys(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.n as u32).filter(|&k| self.in_dsk[k as usize])
    }

    /// `ndependencies`: how many dependencies each key still waits for, and the number of
    /// tasks (counted along every path) that must run before it. A key never reached
    /// is on a cycle.
    fn ndependencies(&mut self) -> Result<(), OrderError> {
        let n = self.n;
        let mut num_needed = vec![0u32; n];
        let mut total = vec![0u64; n];
        let mut waiting = vec![0u32; n];
        let mut stack: Vec<u32> = Vec::new();
        let mut reached = 0usize;
        let alive: Vec<u32> = self.alive_keys().collect();
        for &k in &alive {
            let d = self.deps_items(k).len() as u32;
            num_needed[k as usize] = d;
            waiting[k as usize] = d;
            if d == 0 {
                stack.push(k);
            }
        }
        while let Some(k) = stack.pop() {
            reached += 1;
            let mut t: u64 = 1;
            for &c in self.deps_items(k) {
                t = t
                    .checked_add(total[c as usize])
                    .ok_or(OrderError::Overflow)?;
            }
            total[k as usize] = t;
            for &p in self.dependents_of(k) {
                waiting[p as usize] -= 1;
                if waiting[p as usize] == 0 {
                    stack.push(p);
                }
            }
        }
        if reached != alive.len() {
            return Err(OrderError::Cycle);
        }
        self.num_needed = num_needed;
        self.total_dependencies = total;
        Ok(())
    }

    /// `_connecting_to_roots` both ways: how many roots each key descends from (and the
    /// largest dependents count among them), and the leaves each root leads to.
    fn connecting_to_roots(&mut self) {
        let n = self.n;
        let alive: Vec<u32> = self.alive_keys().collect();
        let mut max_dependents = vec![0u32; n];
        let mut roots_len = vec![0u32; n];
        let reach = self.propagate(&alive, true, Some(&mut max_dependents));
        for &k in &alive {
            // dask gives the roots themselves no roots
            if !self.deps_items(k).is_empty() {
                roots_len[k as usize] = reach.len(k) as u32;
            }
        }
        drop(reach);
        let mut reach = self.propagate(&alive, false, None);
        for &k in &alive {
            if self.dependents_of(k).is_empty() {
                reach.of[k as usize] = Some(Reach::Empty); // nor the leaves any leaves
            } else if !self.deps_items(k).is_empty() {
                reach.of[k as usize] = None; // only roots' leaves are read
            }
        }
        self.roots_connected_len = roots_len;
        self.max_dependents = max_dependents;
        self.leafs_connected = reach;
    }

    /// For every key, the sources (keys with no inputs) it is reached from: following
    /// dependents from the roots (`up`), or dependencies from the leaves.
    fn propagate(
        &self,
        alive: &[u32],
        up: bool,
        mut max_dependents: Option<&mut Vec<u32>>,
    ) -> Reaches {
        let n = self.n;
        let inputs = |k: u32| -> &[u32] {
            if up {
                self.deps_items(k)
            } else {
                self.dependents_of(k)
            }
        };
        let outputs = |k: u32| -> &[u32] {
            if up {
                self.dependents_of(k)
            } else {
                self.deps_items(k)
            }
        };
        let mut reach = Reaches {
            of: vec![None; n],
            sets: Vec::new(),
        };
        let mut waiting = vec![0u32; n];
        let mut stack = Vec::new();
        for &k in alive {
            let ins = inputs(k).len() as u32;
            waiting[k as usize] = ins;
            if ins == 0 {
                reach.of[k as usize] = Some(Reach::One(k));
                if let Some(md) = max_dependents.as_deref_mut() {
                    md[k as usize] = self.dependents_of(k).len() as u32;
                }
                stack.push(k);
            }
        }
        // the sets made, by content
        let hasher = hashbrown::DefaultHashBuilder::default();
        let mut dedup: hashbrown::HashTable<u32> = hashbrown::HashTable::new();
        // Upwards, a key whose ancestors (and itself) each have one dependent at most
        // heads a tree: its roots are its inputs' roots, disjoint, so only their number
        // is kept, until a key with more dependents needs the set itself.
        let mut exclusive = vec![false; if up { n } else { 0 }];
        if up {
            for &k in alive {
                if inputs(k).is_empty() && outputs(k).len() <= 1 {
                    exclusive[k as usize] = true;
                }
            }
        }
        // the inputs with distinct sets, by id
        let mut distinct: Vec<u32> = Vec::new();
        let mut union: Vec<u32> = Vec::new();
        let mut scratch: Vec<u32> = Vec::new();
        let mut cone: Vec<u32> = Vec::new();
        while let Some(k) = stack.pop() {
            if reach.of[k as usize].is_none() {
                let mut md = 0;
                if let Some(m) = max_dependents.as_deref() {
                    md = inputs(k).iter().map(|&c| m[c as usize]).max().unwrap_or(0);
                }
                let r = if up
                    && outputs(k).len() <= 1
                    && inputs(k).iter().all(|&c| exclusive[c as usize])
                {
                    exclusive[k as usize] = true;
                    let count: usize = inputs(k)
                        .iter()
                        .map(|&c| {
                            assert!(reach.of[c as usize].is_some(), "input done");
                            reach.len(c)
                        })
                        .sum();
                    Reach::Tree(count as u32)
                } else {
                    distinct.clear();
                    for &c in inputs(k) {
                        let r = reach.of[c as usize].as_ref().expect("input done");
                        if !distinct
                            .iter()
                            .any(|&d| reach.of[d as usize].as_ref().expect("input done").same(r))
                        {
                            distinct.push(c);
                        }
                    }
                    let set = |d: u32| reach.of[d as usize].as_ref().expect("input done");
                    if distinct.len() == 1 && !matches!(set(distinct[0]), Reach::Tree(_)) {
                        *set(distinct[0])
                    } else {
                        union.clear();
                        let mut largest_len = 0;
                        let mut largest_shared: Option<Reach> = None;
                        for &d in &distinct {
                            let part: &[u32] = match set(d) {
                                Reach::Tree(_) => {
                                    self.cone_roots(d, &mut cone);
                                    &cone
                                }
                                _ => reach.slice(d),
                            };
                            if !matches!(set(d), Reach::Tree(_)) && part.len() > largest_len {
                                largest_len = part.len();
                                largest_shared = Some(*set(d));
                            }
                            merge_sorted_into(&union, part, &mut scratch);
                            std::mem::swap(&mut union, &mut scratch);
                        }
                        match largest_shared {
                            Some(shared) if union.len() == largest_len => shared,
                            _ => {
                                let h = hasher.hash_one(union.as_slice());
                                let found = dedup
                                    .find(h, |&i| *reach.sets[i as usize] == *union.as_slice())
                                    .copied();
                                Reach::Many(found.unwrap_or_else(|| {
                                    let sets = &mut reach.sets;
                                    let i = sets.len() as u32;
                                    sets.push(union.as_slice().into());
                                    dedup.insert_unique(h, i, |&j| {
                                        hasher.hash_one(&*sets[j as usize])
                                    });
                                    i
                                }))
                            }
                        }
                    }
                };
                if let Some(m) = max_dependents.as_deref_mut() {
                    m[k as usize] = md;
                }
                reach.of[k as usize] = Some(r);
            }
            for &p in outputs(k) {
                waiting[p as usize] -= 1;
                if waiting[p as usize] == 0 {
                    stack.push(p);
                }
            }
        }
        reach
    }

    /// dask's `use_longest_path`. Its loop over `root_nodes` keeps the first non-zero
    /// number of leaves a root leads to and compares the rest with it, so an isolated
    /// root (no leaves) decides by where the set iterates it: then the set is built.
    /// The roots above `k`, sorted, for a key heading a tree (`Reach::Tree`).
    fn cone_roots(&self, k: u32, out: &mut Vec<u32>) {
        out.clear();
        let mut stack = vec![k];
        while let Some(x) = stack.pop() {
            let ins = self.deps_items(x);
            if ins.is_empty() {
                out.push(x);
            } else {
                stack.extend_from_slice(ins);
            }
        }
        out.sort_unstable();
    }

    fn use_longest_path(
        &self,
        n_leaves: usize,
        n_roots: usize,
        root_set: Option<PySet<u32>>,
    ) -> bool {
        let (nr, nl) = (n_roots as f64, n_leaves as f64);
        if (nr - nl).abs() / nr >= 0.8 {
            return true;
        }
        let leaves_of = |r: u32| self.leafs_connected.len(r);
        let roots: Vec<u32> = match root_set {
            Some(set) => set.iter().collect(),
            None => {
                let roots = (0..self.n as u32).filter(|&r| self.root_nodes[r as usize]);
                if roots.clone().any(|r| leaves_of(r) == 0) {
                    let mut set = PySet::new();
                    for r in roots {
                        set.insert(r, self.h(r));
                    }
                    set.iter().collect()
                } else {
                    roots.collect()
                }
            }
        };
        let mut size = 0;
        for r in roots {
            let l = leaves_of(r);
            if size == 0 {
                size = l;
            } else if size != l {
                return false;
            }
        }
        true
    }

    fn get_target(&mut self) -> Result<u32, OrderError> {
        let all_leafs_accessible = self.min_leaf_degree == self.max_leaf_degree;
        let is_trivial_lookup = self.reachable_len == 0 || all_leafs_accessible;
        if !is_trivial_lookup {
            let min = self.min_leaf_degree;
            let mut candidates: Vec<u32> = if self.degrees.len(min) <= self.reachable_len {
                self.degrees
                    .iter(min)
                    .filter(|&k| self.in_reachable_hull[k as usize])
                    .collect()
            } else {
                let mut c: Vec<u32> = self
                    .reachable_added
                    .iter()
                    .copied()
                    .filter(|&k| {
                        self.in_reachable_hull[k as usize] && self.degrees.of(k) == Some(min)
                    })
                    .collect();
                c.sort_unstable();
                c.dedup();
                c
            };
            if candidates.is_empty() {
                candidates = self.degrees.iter(min).collect();
            }
            return self
                .min_by_key(candidates.into_iter())
                .ok_or(OrderError::Inconsistent("min() of no candidates"));
        }
        self.leaf_nodes_sorted
            .pop()
            .ok_or(OrderError::Inconsistent("pop from an empty leaf list"))
    }

    fn add_to_result(&mut self, item: u32) {
        let mut next_items = vec![item];
        while let Some(item) = next_items.pop() {
            let k = item as usize;
            self.runnable_hull[k] = false;
            self.hull_discard(item);
            self.leaf_nodes[k] = false;
            if self.in_result[k] {
                continue;
            }
            while let Some(data) = self.requires_data_task.get_mut(&item).and_then(|s| s.pop()) {
                self.add_to_result(data);
            }
            let cp2 = 2 * self.crit_path_counter - i64::from(self.offset_half);
            self.assign(item, self.i, cp2);
            if !self.is_external[k] {
                self.i += 1;
            }
            if self.root_nodes[k] {
                // lowering degrees leaves the reaches alone
                let reaches = std::mem::take(&mut self.leafs_connected);
                for &leaf in reaches.slice(item) {
                    if self.leaf_nodes[leaf as usize] {
                        self.lower_leaf_degree(leaf);
                    }
                }
                self.leafs_connected = reaches;
            }
            let single = self.dependents_of(item).len() == 1;
            for i in 0..self.dependents_of(item).len() {
                let dep = self.dependents_of(item)[i];
                let d = dep as usize;
                self.num_needed[d] -= 1;
                self.hull_add(dep);
                if self.num_needed[d] == 0 {
                    if single {
                        next_items.push(dep);
                    } else {
                        self.runnable.push(dep);
                    }
                }
            }
        }
    }

    fn lower_leaf_degree(&mut self, leaf: u32) {
        let Some(degree) = self.degrees.remove(leaf) else {
            self.error = Some(OrderError::Inconsistent("leaf without a degree"));
            return;
        };
        let new_degree = degree - 1;
        if new_degree > 0 {
            if new_degree < self.min_leaf_degree {
                self.min_leaf_degree = new_degree;
            }
            self.degrees.insert(leaf, new_degree);
        } else if self.degrees.len(degree) == 0 {
            if degree != self.min_leaf_degree {
                self.error = Some(OrderError::Inconsistent("leaf degree"));
                return;
            }
            while self.min_leaf_degree != self.max_leaf_degree
                && self.degrees.len(self.min_leaf_degree) == 0
            {
                self.min_leaf_degree += 1;
            }
        }
    }

    /// dask's `process_runnables`: walk forward from every runnable task to the next
    /// reducer, and run the paths that lead to a leaf or complete a reducer.
    fn process_runnables(&mut self) {
        self.offset_half = true;
        while !self.runnable.is_empty() {
            let mut candidates = std::mem::take(&mut self.runnable);
            while let Some(key) = candidates.pop() {
                if self.runnable_hull[key as usize] || self.in_result[key as usize] {
                    continue;
                }
                if self.leaf_nodes[key as usize] {
                    self.add_to_result(key);
                    continue;
                }
                let mut branches: VecDeque<(usize, Vec<u32>)> = VecDeque::new();
                branches.push_back((0, vec![key]));
                while let Some((mut nsplits, mut path)) = branches.pop_front() {
                    loop {
                        let current = *path.last().expect("non-empty path");
                        let c = current as usize;
                        self.runnable_hull[c] = true;
                        let n_down = self.dependents_of(current).len();
                        let n_up = self.deps_items(current).len();
                        if n_down == 0 {
                            if self.num_needed[c] <= 1 {
                                for &k in &path {
                                    self.add_to_result(k);
                                }
                            } else {
                                self.runnable_hull[c] = false;
                            }
                        } else if path.len() == 1 || n_up == 1 {
                            if n_down > 1 {
                                nsplits += 1;
                                let mut down: Vec<u32> = self.dependents_of(current).to_vec();
                                self.sort_by_key(&mut down);
                                for d in down {
                                    if self.deps_items(d).len() == 1 {
                                        let mut branch = path.clone();
                                        branch.push(d);
                                        branches.push_back((nsplits, branch));
                                    }
                                }
                                break;
                            }
                            path.extend_from_slice(self.dependents_of(current));
                            continue;
                        } else if self.known_runnable_paths.contains_key(&current) {
                            self.runnable_hull[c] = false;
                            let paths = self
                                .known_runnable_paths
                                .get_mut(&current)
                                .expect("checked");
                            paths.push(path);
                            if paths.len() >= self.num_needed[c] as usize {
                                let paths =
                                    self.known_runnable_paths.remove(&current).expect("checked");
                                let mut pruned: VecDeque<Vec<u32>> = VecDeque::new();
                                for p in paths {
                                    if p.len() < 2 {
                                        self.error = Some(OrderError::Inconsistent("short path"));
                                        break;
                                    }
                                    if !self.in_result[p[p.len() - 2] as usize] {
                                        pruned.push_back(p);
                                    }
                                }
                                if pruned.len() < self.num_needed[c] as usize {
                                    self.known_runnable_paths
                                        .insert(current, pruned.into_iter().collect());
                                } else {
                                    if nsplits > 1 {
                                        let mut joined = Vec::new();
                                        for p in pruned {
                                            joined.extend(p);
                                        }
                                        branches.push_back((nsplits - 1, joined));
                                        break;
                                    }
                                    while let Some(p) = pruned.pop_front() {
                                        let mut blocked = false;
                                        for &k in &p {
                                            if self.num_needed[k as usize] != 0 {
                                                blocked = true;
                                                break;
                                            }
                                            self.add_to_result(k);
                                        }
                                        if blocked {
                                            pruned.push_back(p);
                                        }
                                        if self.error.is_some() {
                                            break;
                                        }
                                    }
                                }
                            }
                        } else if n_up > 1 && self.num_needed[c] <= 1 {
                            for &k in &path {
                                self.add_to_result(k);
                            }
                        } else {
                            self.known_runnable_paths.insert(current, vec![path]);
                            self.runnable_hull[c] = false;
                        }
                        break;
                    }
                }
            }
        }
        self.offset_half = false;
    }
}

fn merge_sorted_into(a: &[u32], b: &[u32], out: &mut Vec<u32>) {
    out.clear();
    out.reserve(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}
