//! The kernel's functions, from `/proc/kallsyms` (whose addresses are zeros unless the reader
//! may see them: `kernel.kptr_restrict`).

/// The kernel's function symbols, in address order.
#[derive(Default)]
pub struct KernelSymbols {
    /// `(address, name, module)`.
    symbols: Vec<(u64, String, Option<String>)>,
}

impl KernelSymbols {
    /// Read `/proc/kallsyms`; empty when it cannot be read or hides the addresses.
    pub fn load() -> KernelSymbols {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        KernelSymbols::parse(&text)
    }

    /// Parse the text of `/proc/kallsyms`.
    pub fn parse(text: &str) -> KernelSymbols {
        let mut symbols = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (words.next(), words.next(), words.next()) else { continue };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            if addr == 0 {
                continue;
            }
            let module = words.next().map(|m| m.trim_start_matches('[').trim_end_matches(']').to_owned());
            symbols.push((addr, name.to_owned(), module));
        }
        symbols.sort_by_key(|s| s.0);
        KernelSymbols { symbols }
    }

    /// The function at `addr`: its name, the offset into it, its module.
    pub fn find(&self, addr: u64) -> Option<(&str, u64, Option<&str>)> {
        let i = self.symbols.partition_point(|s| s.0 <= addr);
        let (start, name, module) = self.symbols.get(i.checked_sub(1)?)?;
        Some((name, addr - start, module.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_address_is_the_function_before_it() {
        let k = KernelSymbols::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 t helper\nffffffff81000200 D data\n\
             ffffffffc0000000 t mod_fn\t[ext4]\n0000000000000000 T hidden\n",
        );
        assert_eq!(k.find(0xffffffff81000104), Some(("helper", 4, None)));
        assert_eq!(k.find(0xffffffff81000204), Some(("helper", 0x104, None)));
        assert_eq!(k.find(0xffffffffc0000010), Some(("mod_fn", 0x10, Some("ext4"))));
        assert_eq!(k.find(0x1000), None);
    }
}
