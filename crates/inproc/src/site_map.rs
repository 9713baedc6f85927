//! The registry's sites by address: found by a hash of the address, walked in address order.
//!
//! Registering or unregistering a batch looks each of its sites up a dozen times or more, in
//! the passes of `Engine::apply`: with thousands of sites in an ordered tree, those searches
//! (a few cache misses each, at every level) were a quarter of the time of a batch of
//! 10,000. Here an index of small entries (address, position) finds a site in one probe of
//! its table, and the sites themselves lie in one array, those of a batch next to each other
//! in address order, as the passes walk them (a refused batch's sites are removed, and the
//! last site takes the place of each). The addresses alone, in an ordered set beside
//! them, answer what needs order (the sites whose window may hold an address).

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::{Index, Range};

use dprobe_arch::Addr;

/// Values by address (see the module's comment).
pub(crate) struct SiteMap<V> {
    index: HashMap<Addr, u32, BuildHasherDefault<AddrHasher>>,
    values: Vec<(Addr, V)>,
    order: BTreeSet<Addr>,
}

impl<V> Default for SiteMap<V> {
    fn default() -> Self {
        SiteMap { index: HashMap::default(), values: Vec::new(), order: BTreeSet::new() }
    }
}

impl<V> SiteMap<V> {
    pub(crate) fn get(&self, addr: &Addr) -> Option<&V> {
        self.index.get(addr).map(|&i| &self.values[i as usize].1)
    }

    pub(crate) fn get_mut(&mut self, addr: &Addr) -> Option<&mut V> {
        self.index.get(addr).map(|&i| &mut self.values[i as usize].1)
    }

    /// Add the values of `new` whose address has none yet (the others are dropped), next to
    /// each other in address order.
    pub(crate) fn insert_new(&mut self, mut new: Vec<(Addr, V)>) {
        new.sort_unstable_by_key(|(a, _)| *a);
        // Room for them all at once: a value is a few hundred bytes, and growing by doubling
        // would copy (and first touch) a large batch's several times.
        self.values.reserve(new.len());
        self.index.reserve(new.len());
        for (addr, value) in new {
            if self.index.contains_key(&addr) {
                continue;
            }
            let at = u32::try_from(self.values.len()).expect("fewer than 2^32 sites");
            self.index.insert(addr, at);
            self.order.insert(addr);
            self.values.push((addr, value));
        }
    }

    pub(crate) fn remove(&mut self, addr: &Addr) -> Option<V> {
        let at = self.index.remove(addr)? as usize;
        self.order.remove(addr);
        let (_, value) = self.values.swap_remove(at);
        if let Some((moved, _)) = self.values.get(at) {
            self.index.insert(*moved, at as u32);
        }
        Some(value)
    }

    /// In no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.values.iter().map(|(_, v)| v)
    }

    /// With their addresses, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Addr, &V)> {
        self.values.iter().map(|(a, v)| (a, v))
    }

    /// Those in `range`, in address order.
    pub(crate) fn range(&self, range: Range<Addr>) -> impl Iterator<Item = (&Addr, &V)> {
        self.order.range(range).map(|a| (a, &self[a]))
    }
}

impl<V> Index<&Addr> for SiteMap<V> {
    type Output = V;

    /// Panics where there is no value: a caller's broken invariant, as `BTreeMap`'s would.
    fn index(&self, addr: &Addr) -> &V {
        &self.values[self.index[addr] as usize].1
    }
}

/// Addresses are distinct and not random (functions start on 16-byte boundaries): mixed so
/// that every bit of the address moves the low bits the table indexes by (the finalizer of
/// MurmurHash3). Not keyed: the addresses are the program's own, not an adversary's.
#[derive(Default)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)) ^ (self.0 >> 56);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_address_and_walks_in_address_order() {
        let mut m = SiteMap::default();
        m.insert_new([0x5000u64, 0x1000, 0x3010].iter().map(|&a| (Addr(a), a)).collect());
        m.insert_new(vec![(Addr(0x3000), 0x3000), (Addr(0x5000), 99)]);
        *m.get_mut(&Addr(0x3000)).expect("there") += 1;
        assert_eq!(m[&Addr(0x5000)], 0x5000, "an existing value is not replaced");
        assert_eq!(m[&Addr(0x3000)], 0x3001);
        let all: Vec<u64> = m.range(Addr(0)..Addr(u64::MAX)).map(|(a, _)| a.0).collect();
        assert_eq!(all, [0x1000, 0x3000, 0x3010, 0x5000]);
        let near: Vec<u64> = m.range(Addr(0x2000)..Addr(0x3010)).map(|(a, v)| a.0 + v).collect();
        assert_eq!(near, [0x3000 + 0x3001]);
        assert_eq!(m.remove(&Addr(0x1000)), Some(0x1000));
        assert!(m.get(&Addr(0x1000)).is_none());
        assert_eq!(m.range(Addr(0)..Addr(u64::MAX)).count(), 3, "gone from the order too");
        // The value moved into the removed one's place is still found.
        let rest: Vec<(u64, u64)> = m.range(Addr(0)..Addr(u64::MAX)).map(|(a, v)| (a.0, *v)).collect();
        assert_eq!(rest, [(0x3000, 0x3001), (0x3010, 0x3010), (0x5000, 0x5000)]);
        *m.get_mut(&Addr(0x5000)).expect("there") = 7;
        assert_eq!(m.values().copied().max(), Some(0x3010));
    }

    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        let low = |a: u64| {
            let mut h = AddrHasher::default();
            h.write_u64(a);
            h.finish() & 1023
        };
        let buckets: std::collections::HashSet<u64> = (0..1024u64).map(|i| low(0x7f00_0000_0000 + 64 * i)).collect();
        assert!(buckets.len() > 600, "1,024 aligned addresses fell in {} of 1,024 buckets", buckets.len());
    }
}
