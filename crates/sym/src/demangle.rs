//! Demangling Rust (legacy and v0) and C++ (Itanium) symbol names.

/// The demangled name of `mangled`, if it is a Rust or C++ mangled name. Rust names lose their
/// hash (`my_crate::module::function`); C++ names keep their parameter list
/// (`ns::Widget::draw(int)`).
pub fn demangle(mangled: &str) -> Option<String> {
    if let Ok(d) = rustc_demangle::try_demangle(mangled) {
        return Some(format!("{d:#}"));
    }
    if mangled.starts_with("_Z") {
        return cpp_demangle::Symbol::new(mangled)
            .ok()
            .and_then(|s| s.demangle(&cpp_demangle::DemangleOptions::default()).ok());
    }
    None
}

/// The part of a demangled C++ name before its parameter list.
pub(crate) fn without_parameters(demangled: &str) -> &str {
    demangled.split_once('(').map_or(demangled, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_and_cpp_names() {
        assert_eq!(demangle("_ZN3std2io5stdio6_print17h0123456789abcdefE").as_deref(), Some("std::io::stdio::_print"));
        assert_eq!(demangle("_ZN2ns6Widget4drawEi").as_deref(), Some("ns::Widget::draw(int)"));
        assert_eq!(demangle("getpid"), None);
        assert_eq!(without_parameters("ns::Widget::draw(int)"), "ns::Widget::draw");
    }
}
