//! Where each name of an object's functions is among them: looked up for every probe given by
//! name, and built once per file read (in the agent, once per program it is loaded into: a
//! traced shell's every `exec`), so its building is kept cheap: a multiply-and-rotate hash
//! (the names are the file's symbols, not input crafted against the hash), and no list for
//! the one place most names have.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::demangle::without_parameters;
use crate::symbols::Function;

/// Where each name of a list of functions is in it: its symbol name, and for Rust and C++
/// its demangled name with and without parameters. Built once per file.
#[derive(Debug, Default)]
pub(crate) struct NameIndex(HashMap<String, Places, BuildHasherDefault<NameHasher>>);

/// The places of the functions with one name, in address order.
#[derive(Debug)]
enum Places {
    One([u32; 1]),
    Many(Vec<u32>),
}

impl Places {
    fn add(&mut self, i: u32) {
        match self {
            Places::One([first]) => *self = Places::Many(vec![*first, i]),
            Places::Many(all) => all.push(i),
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Places::One(one) => one,
            Places::Many(all) => all,
        }
    }
}

impl NameIndex {
    pub(crate) fn of(funcs: &[Function]) -> NameIndex {
        let mut by_name = HashMap::with_capacity_and_hasher(funcs.len(), BuildHasherDefault::default());
        let mut add = |name: &str, i: u32| match by_name.get_mut(name) {
            Some(places) => Places::add(places, i),
            None => {
                by_name.insert(name.to_owned(), Places::One([i]));
            }
        };
        for (i, f) in funcs.iter().enumerate() {
            let i = i as u32;
            add(&f.name, i);
            if let Some(d) = &f.demangled {
                let short = without_parameters(d);
                add(short, i);
                if short != &**d {
                    add(d, i);
                }
            }
        }
        NameIndex(by_name)
    }

    /// The places of the functions named `name`, in address order.
    pub(crate) fn get(&self, name: &str) -> &[u32] {
        self.0.get(name).map_or(&[], Places::as_slice)
    }
}

/// A fast hash of a name, eight bytes at a time (the one rustc's own tables use).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NameHasher(u64);

impl NameHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.add(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        }
        let mut last = [0u8; 8];
        let rest = words.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(last) ^ rest.len() as u64);
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dprobe_arch::Addr;
    use std::sync::Arc;

    fn function(name: &str, demangled: Option<&str>, start: u64) -> Function {
        Function {
            name: name.into(),
            demangled: demangled.map(Into::into),
            version: None,
            default_version: false,
            start: Addr(start),
            size: 1,
            object: Arc::from("/lib/x.so"),
            bias: 0,
            file_offset: start,
            ifunc: false,
        }
    }

    #[test]
    fn every_name_finds_its_places_in_order() {
        let funcs = [
            function("open", None, 1),
            function("_ZN1a4openEv", Some("a::open()"), 2),
            function("open", None, 3),
            function("close", None, 4),
        ];
        let index = NameIndex::of(&funcs);
        assert_eq!(index.get("open"), [0, 2]);
        assert_eq!(index.get("close"), [3]);
        assert_eq!(index.get("a::open"), [1]);
        assert_eq!(index.get("a::open()"), [1]);
        assert_eq!(index.get("_ZN1a4openEv"), [1]);
        assert_eq!(index.get("opens"), [] as [u32; 0]);
        assert_eq!(index.get(""), [] as [u32; 0]);
    }

    /// Names that differ only in their length's last bytes, or by a byte past eight, hash
    /// apart (a collision would cost time, never a wrong answer: the map compares the names).
    #[test]
    fn near_names_hash_apart() {
        let hash = |s: &str| {
            let mut h = NameHasher::default();
            h.write(s.as_bytes());
            h.finish()
        };
        let names = ["a", "a\0", "abcdefgh", "abcdefgh\0", "abcdefghi", "abcdefghj", "memcpy", "memmove", ""];
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(hash(a), hash(b), "{a:?} and {b:?}");
            }
        }
    }
}
