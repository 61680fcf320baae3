//! A pool's lanes in [`LaneKey`] order, as a winner tree (a tournament tree) over the pool's
//! lane slots.
//!
//! Every lifecycle re-keys one or two lanes: the lane a task was assigned from (its head and
//! its usage changed), and the lane a task joined when it became that lane's head. A
//! `BTreeSet` paid a removal and an insertion for each, with a five-field comparison per key
//! of every node it passed: about 1,900 instructions a lifecycle, the largest single part of
//! one. Here a lane has a fixed slot, and a re-key walks from its leaf towards the root
//! recomputing each node's winner, stopping at the first node whose winner neither changed
//! nor is the re-keyed lane. Each level reads the other child's winner and that lane's key.
//! A lane whose key gets worse while it leads (the assigned one) walks the whole path,
//! log2(lanes) comparisons; a lane whose new key beats the leader's writes its path without
//! comparing at all.
//!
//! The least key is the root's winner. Walking the keys in order, which only share tiers need
//! (when the first lane is at its share already), is a best-first search over the tree.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::queue::{LaneIdx, LaneKey};

/// Sorts after every key a lane can have: task ids never reach `u64::MAX`.
const ABSENT: LaneKey = LaneKey {
    neg_level: i64::MAX,
    share: u64::MAX,
    head_ready_since: u64::MAX,
    head_id: u64::MAX,
};

#[derive(Debug, Clone)]
pub(crate) struct LaneIndex {
    /// Per slot, the key of the lane there, or [`ABSENT`] while it is out of the index (and
    /// for the leaves past the last slot).
    keys: Vec<LaneKey>,
    /// Per slot, its lane: apart from the keys, so that a key is 32 bytes and a level of a
    /// walk reads one line of them.
    lanes: Vec<LaneIdx>,
    slots: usize,
    /// `winners[n]`, for an inner node `n` in `1..capacity`, is the slot with the least key
    /// below `n`; node `capacity + s` is the leaf of slot `s` (its winner is `s`), and node 1
    /// the root.
    winners: Vec<u32>,
    /// A power of two, at least the number of slots: the number of leaves.
    capacity: usize,
    len: usize,
}

impl Default for LaneIndex {
    fn default() -> Self {
        LaneIndex {
            keys: vec![ABSENT],
            lanes: vec![0],
            slots: 0,
            winners: vec![0, 0],
            capacity: 1,
            len: 0,
        }
    }
}

impl LaneIndex {
    /// Makes room for `lane` and returns its slot, out of the index.
    pub fn add_slot(&mut self, lane: LaneIdx) -> u32 {
        let slot = self.slots;
        self.slots += 1;
        if self.slots > self.capacity {
            self.capacity *= 2;
            self.keys.resize(self.capacity, ABSENT);
            self.lanes.resize(self.capacity, 0);
            self.rebuild();
        }
        self.lanes[slot] = lane;
        slot as u32
    }

    /// The lane in `slot`.
    pub fn lane(&self, slot: u32) -> Option<LaneIdx> {
        ((slot as usize) < self.slots).then(|| self.lanes[slot as usize])
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key of the lane in `slot`, if it is in the index.
    pub fn key(&self, slot: u32) -> Option<LaneKey> {
        self.keys
            .get(slot as usize)
            .copied()
            .filter(|k| *k != ABSENT)
    }

    /// The least key: that of the lane served first.
    pub fn first_key(&self) -> Option<LaneKey> {
        (self.len > 0).then(|| self.keys[self.winners[1] as usize])
    }

    /// The lane with the least key: the one served first.
    pub fn first(&self) -> Option<LaneIdx> {
        (self.len > 0).then(|| self.lanes[self.winners[1] as usize])
    }

    /// Puts the lane in `slot` in the index under `key`, or takes it out (`None`).
    pub fn set(&mut self, slot: u32, key: Option<LaneKey>) {
        let s = slot as usize;
        let key = key.unwrap_or(ABSENT);
        let old = self.keys[s];
        self.keys[s] = key;
        match (old != ABSENT, key != ABSENT) {
            (false, true) => self.len += 1,
            (true, false) => self.len -= 1,
            _ => {}
        }
        // A lane that takes the lead wins every node on its path, and a leader whose key
        // improves keeps them: no comparison on the way up. (In the core bench, a new task
        // that becomes its lane's head is often the best of the pool: its lane takes this path.)
        let leader = self.winners[1];
        if leader != slot && precedes(&key, &self.keys[leader as usize]) {
            let mut node = (self.capacity + s) >> 1;
            while node >= 1 {
                self.winners[node] = slot;
                node >>= 1;
            }
            return;
        }
        if leader == slot && !precedes(&old, &key) {
            return;
        }
        // Carries the winner of the subtree walked so far up the path: each level then
        // reads only the other child's winner and its key.
        let (mut best, mut best_key) = (slot, key);
        let mut node = self.capacity + s;
        while node > 1 {
            let other = self.winners[node ^ 1];
            let other_key = self.keys[other as usize];
            if precedes(&other_key, &best_key) {
                (best, best_key) = (other, other_key);
            }
            node >>= 1;
            let before = self.winners[node];
            // The node's least key is the same key as before: nothing above it changes.
            if best == before && before != slot {
                break;
            }
            self.winners[node] = best;
        }
    }

    /// Every lane in the index with its key, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (LaneIdx, LaneKey)> + '_ {
        self.lanes
            .iter()
            .copied()
            .zip(self.keys.iter().copied())
            .filter(|(_, k)| *k != ABSENT)
    }

    /// Every lane in the index with its key, least first: O(log lanes) a lane, for walks
    /// that stop early.
    pub fn iter(&self) -> InOrder<'_> {
        let mut frontier = BinaryHeap::new();
        if self.len > 0 {
            frontier.push(Reverse((self.keys[self.winners[1] as usize], 1)));
        }
        InOrder {
            index: self,
            frontier,
        }
    }

    /// Whether every inner node names a slot with the least key below it (which slot, among
    /// absent ones, does not matter) and `len` counts the keys: the early stop in
    /// [`LaneIndex::set`] relies on the nodes above a change being right.
    pub fn consistent(&self) -> bool {
        let key_of = |node: usize| self.keys[self.winners[node] as usize];
        let nodes_agree = (1..self.capacity)
            .all(|node| key_of(node) == key_of(2 * node).min(key_of(2 * node + 1)));
        let leaves_agree =
            (0..self.capacity).all(|s| self.winners[self.capacity + s] as usize == s);
        nodes_agree && leaves_agree && self.entries().count() == self.len
    }

    fn rebuild(&mut self) {
        self.winners = vec![0; 2 * self.capacity];
        for s in 0..self.capacity {
            self.winners[self.capacity + s] = s as u32;
        }
        for node in (1..self.capacity).rev() {
            let left = self.winners[2 * node];
            let right = self.winners[2 * node + 1];
            self.winners[node] = if precedes(&self.keys[right as usize], &self.keys[left as usize])
            {
                right
            } else {
                left
            };
        }
    }
}

/// `a < b`, spelt out: the derived comparison goes through an `Option<Ordering>` per field
/// and cost a third of a walk's instructions.
#[inline]
fn precedes(a: &LaneKey, b: &LaneKey) -> bool {
    (a.neg_level, a.share, a.head_ready_since, a.head_id)
        < (b.neg_level, b.share, b.head_ready_since, b.head_id)
}

/// See [`LaneIndex::iter`]: the frontier holds nodes by their least key; a node's children
/// replace it as it is taken, and a leaf taken is the next key.
pub(crate) struct InOrder<'a> {
    index: &'a LaneIndex,
    frontier: BinaryHeap<Reverse<(LaneKey, usize)>>,
}

impl Iterator for InOrder<'_> {
    type Item = (LaneIdx, LaneKey);

    fn next(&mut self) -> Option<(LaneIdx, LaneKey)> {
        let index = self.index;
        while let Some(Reverse((key, node))) = self.frontier.pop() {
            if node >= index.capacity {
                return Some((index.lanes[node - index.capacity], key));
            }
            for child in [2 * node, 2 * node + 1] {
                let child_key = index.keys[index.winners[child] as usize];
                if child_key != ABSENT {
                    self.frontier.push(Reverse((child_key, child)));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Lane `lane` sits in slot `lane`, and its head's id is `lane + 1`.
    fn key(level: i64, share: u64, lane: u32) -> LaneKey {
        LaneKey {
            neg_level: -level,
            share,
            head_ready_since: 0,
            head_id: 1 + u64::from(lane),
        }
    }

    #[test]
    fn the_leader_is_the_least_key_as_lanes_come_go_and_change() {
        let mut index = LaneIndex::default();
        let slots: Vec<u32> = (0..5).map(|lane| index.add_slot(lane)).collect();
        assert_eq!(slots, [0, 1, 2, 3, 4]);
        assert!(index.first().is_none());
        index.set(3, Some(key(1, 50, 3)));
        index.set(1, Some(key(1, 20, 1)));
        assert_eq!(index.first(), Some(1));
        // The leader's usage grows past the other lane's: it drops behind.
        index.set(1, Some(key(1, 70, 1)));
        assert_eq!(index.first(), Some(3));
        // A higher level leads whatever its usage.
        index.set(4, Some(key(2, 900, 4)));
        assert_eq!(index.first(), Some(4));
        index.set(4, None);
        assert_eq!(index.entries().count(), 2);
        let order: Vec<u32> = index.iter().map(|(lane, _)| lane).collect();
        assert_eq!(order, [3, 1]);
        assert_eq!(index.key(4), None);
        assert_eq!(index.key(1).map(|k| k.share), Some(70));
    }

    proptest::proptest! {
        /// Any sequence of slots added and lanes keyed, re-keyed and taken out leaves the
        /// same first key and the same order as a plain ordered set of the keys.
        #[test]
        fn the_tree_agrees_with_an_ordered_set(
            ops in proptest::collection::vec((0u32..40, 0i64..4, 0u64..6, proptest::bool::ANY), 1..400)
        ) {
            let mut index = LaneIndex::default();
            let mut model: BTreeSet<LaneKey> = BTreeSet::new();
            let mut current: Vec<Option<LaneKey>> = Vec::new();
            for (slot, level, share, present) in ops {
                while current.len() <= slot as usize {
                    let s = index.add_slot(current.len() as u32 + 100);
                    proptest::prop_assert_eq!(s as usize, current.len());
                    current.push(None);
                }
                if let Some(old) = current[slot as usize].take() {
                    model.remove(&old);
                }
                let new = present.then(|| key(level, share, slot));
                if let Some(k) = new {
                    model.insert(k);
                }
                current[slot as usize] = new;
                index.set(slot, new);
                // Slot s holds lane s + 100, whose head's id is s + 1.
                let lane_of = |k: &LaneKey| k.head_id as u32 - 1 + 100;
                proptest::prop_assert_eq!(index.first(), model.first().map(lane_of));
                proptest::prop_assert_eq!(index.entries().count(), model.len());
                proptest::prop_assert_eq!(index.key(slot), new);
                proptest::prop_assert_eq!(index.lane(slot), Some(slot + 100));
                let in_order: Vec<(u32, LaneKey)> = index.iter().collect();
                let expected: Vec<(u32, LaneKey)> = model.iter().map(|k| (lane_of(k), *k)).collect();
                proptest::prop_assert_eq!(in_order, expected);
                proptest::prop_assert!(index.consistent());
            }
        }
    }
}
