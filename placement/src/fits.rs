//! The fit table: what the decision needs of every node, stored densely.
//!
//! `/filter` and `/prioritize` look up every candidate node, 5,000 of them per request, so what each
//! lookup touches is what the verbs cost. A map from `String` to per-node data spreads that over
//! wide buckets and a heap string per key. Here instead:
//!
//! * an open-addressing index of 8-byte buckets (hash tag, slot number) at most half full,
//! * the node names back to back in one string,
//! * one 32-byte [`Slot`] per node (name range, time of the report, range of PFs),
//! * every node's PFs back to back in one `Vec<PfFit>`,
//!
//! all updated when a report is ingested. About 100 bytes per node of 2 PFs, touched in at most four
//! places. Forgetting nodes (and PF ranges orphaned by a node's PF count changing) is done by
//! rebuilding the table, which is cheap next to the reports that cause it.

use std::hash::Hasher;
use std::ops::Range;
use std::time::Instant;

/// FxHash (rustc's hasher): a multiply-rotate per word, several times cheaper than SipHash on
/// short node names. Node names come from kube-scheduler and authenticated nodes, so hash
/// flooding is not a concern here.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One PF as the decision needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PfFit {
    pub capacity: u64,
    pub headroom: u64,
    pub pool: u32,
    pub vfs_free: u32,
}

#[derive(Debug, Clone)]
struct Slot {
    name_at: u32,
    name_len: u32,
    received: Instant,
    pfs_at: u32,
    pfs_len: u32,
}

impl Slot {
    fn name_range(&self) -> Range<usize> {
        self.name_at as usize..(self.name_at + self.name_len) as usize
    }

    fn pfs_range(&self) -> Range<usize> {
        self.pfs_at as usize..(self.pfs_at + self.pfs_len) as usize
    }
}

/// An index bucket: the low half of the name's hash (to skip most name comparisons) and the slot.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tag: u32,
    slot: u32,
}

const EMPTY: Bucket = Bucket {
    tag: 0,
    slot: u32::MAX,
};

#[derive(Debug, Clone)]
pub(crate) struct FitTable {
    index: Vec<Bucket>,
    names: String,
    slots: Vec<Slot>,
    pfs: Vec<PfFit>,
    /// PFs in `pfs` no slot refers to any more.
    orphaned: usize,
}

impl Default for FitTable {
    fn default() -> Self {
        FitTable {
            index: vec![EMPTY; 16],
            names: String::new(),
            slots: Vec::new(),
            pfs: Vec::new(),
            orphaned: 0,
        }
    }
}

fn hash(name: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

impl FitTable {
    /// The node's report time and PFs.
    pub fn get(&self, name: &str) -> Option<(Instant, &[PfFit])> {
        let slot = &self.slots[self.find(name, hash(name)).ok()?];
        Some((slot.received, &self.pfs[slot.pfs_range()]))
    }

    /// Stores the node's report time and PFs, replacing what was held for it.
    pub fn put(&mut self, name: &str, received: Instant, pfs: &[PfFit]) {
        let h = hash(name);
        match self.find(name, h) {
            Ok(i) => {
                let slot = &mut self.slots[i];
                slot.received = received;
                if slot.pfs_len as usize == pfs.len() {
                    self.pfs[slot.pfs_range()].copy_from_slice(pfs);
                } else {
                    self.orphaned += slot.pfs_len as usize;
                    slot.pfs_at = self.pfs.len() as u32;
                    slot.pfs_len = pfs.len() as u32;
                    self.pfs.extend_from_slice(pfs);
                    if self.orphaned > 1024 && self.orphaned > self.pfs.len() / 2 {
                        self.compact();
                    }
                }
            }
            Err(at) => {
                let slot = self.slots.len() as u32;
                self.slots.push(Slot {
                    name_at: self.names.len() as u32,
                    name_len: name.len() as u32,
                    received,
                    pfs_at: self.pfs.len() as u32,
                    pfs_len: pfs.len() as u32,
                });
                self.names.push_str(name);
                self.pfs.extend_from_slice(pfs);
                self.index[at] = Bucket {
                    tag: h as u32,
                    slot,
                };
                if self.slots.len() * 2 > self.index.len() {
                    self.reindex(self.index.len() * 2);
                }
            }
        }
    }

    /// Keeps the nodes whose report time passes `keep`, and drops orphaned PFs (a no-op if there
    /// is nothing to drop).
    pub fn retain(&mut self, mut keep: impl FnMut(Instant) -> bool) {
        if self.orphaned == 0 && self.slots.iter().all(|s| keep(s.received)) {
            return;
        }
        let old = std::mem::take(self);
        let live: Vec<&Slot> = old.slots.iter().filter(|s| keep(s.received)).collect();
        self.names
            .reserve(live.iter().map(|s| s.name_len as usize).sum());
        self.slots.reserve(live.len());
        self.pfs
            .reserve(live.iter().map(|s| s.pfs_len as usize).sum());
        for s in live {
            self.slots.push(Slot {
                name_at: self.names.len() as u32,
                pfs_at: self.pfs.len() as u32,
                ..s.clone()
            });
            self.names.push_str(&old.names[s.name_range()]);
            self.pfs.extend_from_slice(&old.pfs[s.pfs_range()]);
        }
        self.reindex((self.slots.len() * 2).next_power_of_two().max(16));
    }

    /// Drops orphaned PFs.
    fn compact(&mut self) {
        self.retain(|_| true);
    }

    /// `Ok(slot)` if the name is held, else `Err(bucket)`: the empty bucket it would go in.
    fn find(&self, name: &str, h: u64) -> Result<usize, usize> {
        let mask = self.index.len() - 1;
        let mut at = (h >> 32) as usize & mask;
        loop {
            let b = self.index[at];
            if b.slot == EMPTY.slot {
                return Err(at);
            }
            if b.tag == h as u32 && &self.names[self.slots[b.slot as usize].name_range()] == name {
                return Ok(b.slot as usize);
            }
            at = (at + 1) & mask;
        }
    }

    /// Rebuilds the index with `buckets` (a power of two, more than twice the slots) buckets.
    fn reindex(&mut self, buckets: usize) {
        self.index = vec![EMPTY; buckets];
        for i in 0..self.slots.len() {
            let name = &self.names[self.slots[i].name_range()];
            let h = hash(name);
            let at = self
                .find(name, h)
                .expect_err("node names in the fit table are unique");
            self.index[at] = Bucket {
                tag: h as u32,
                slot: i as u32,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pfs(n: usize, x: u64) -> Vec<PfFit> {
        (0..n)
            .map(|i| PfFit {
                capacity: x,
                headroom: i as u64,
                pool: 0,
                vfs_free: 1,
            })
            .collect()
    }

    #[test]
    fn put_get_replace_retain() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut t = FitTable::default();
        for i in 0..1000 {
            t.put(&format!("node-{i}"), t0, &pfs(i % 3, i as u64));
        }
        assert_eq!(t.slots.len(), 1000);
        assert!(t.get("node-1000").is_none());
        assert_eq!(t.get("node-7").unwrap(), (t0, &pfs(1, 7)[..]));
        // Same PF count (in place), then a different one (moved).
        t.put("node-7", t1, &pfs(1, 70));
        assert_eq!(t.get("node-7").unwrap(), (t1, &pfs(1, 70)[..]));
        t.put("node-7", t1, &pfs(5, 71));
        assert_eq!(t.get("node-7").unwrap(), (t1, &pfs(5, 71)[..]));
        for i in 0..3000 {
            t.put("node-8", t1, &pfs(i % 2 + 1, i as u64));
        }
        assert!(t.pfs.len() < 3000, "orphaned PFs are dropped");
        assert_eq!(t.get("node-8").unwrap(), (t1, &pfs(2, 2999)[..]));
        t.retain(|r| r == t1);
        assert_eq!(t.slots.len(), 2);
        assert_eq!(t.orphaned, 0);
        assert!(t.get("node-6").is_none());
        assert_eq!(t.get("node-7").unwrap(), (t1, &pfs(5, 71)[..]));
        assert_eq!(t.get("node-8").unwrap(), (t1, &pfs(2, 2999)[..]));
        t.put("", t0, &[]);
        assert_eq!(t.get("").unwrap(), (t0, &[][..]));
    }
}
