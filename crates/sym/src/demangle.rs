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

/// The part of a demangled C++ name before its parameter list: `ns::Widget::draw` for
/// `ns::Widget::draw(int) const`. The parameter list is the last parenthesized group outside
/// template arguments and braces; the parentheses of `operator()` and of `(anonymous
/// namespace)` are part of the name, and so are the `<` and `>` of `operator<`, `operator->`.
pub(crate) fn without_parameters(demangled: &str) -> &str {
    let b = demangled.as_bytes();
    let (mut angles, mut parens, mut braces) = (0i32, 0i32, 0i32);
    let mut list = None;
    let mut i = 0;
    while i < b.len() {
        let rest = &demangled[i..];
        let word_char = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
        let starts_word = i == 0 || !word_char(&b[i - 1]);
        if starts_word && rest.starts_with("operator") && !b.get(i + 8).is_some_and(word_char) {
            // Skip the operator's own symbol: `()`, `[]`, or a run of operator characters.
            i += 8;
            if demangled[i..].starts_with("()") || demangled[i..].starts_with("[]") {
                i += 2;
            } else {
                while b.get(i).is_some_and(|c| b"<>=!+-*/%^&|~,".contains(c)) {
                    i += 1;
                }
            }
            continue;
        }
        if rest.starts_with("(anonymous namespace)") {
            i += "(anonymous namespace)".len();
            continue;
        }
        match b[i] {
            b'<' => angles += 1,
            b'>' => angles -= 1,
            b'{' => braces += 1,
            b'}' => braces -= 1,
            b'(' => {
                if parens == 0 && angles == 0 && braces == 0 {
                    list = Some(i);
                }
                parens += 1;
            }
            b')' => parens -= 1,
            _ => {}
        }
        i += 1;
    }
    list.map_or(demangled, |i| &demangled[..i])
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

    #[test]
    fn the_parameter_list_is_found_past_operators_templates_and_lambdas() {
        for (demangled, name) in [
            ("f(int)", "f"),
            ("f", "f"),
            ("ns::Widget::draw(int) const", "ns::Widget::draw"),
            ("operator+(FxMoney, FxMoney)", "operator+"),
            ("ns::operator++(ns::It&)", "ns::operator++"),
            ("Foo::operator()(int) const", "Foo::operator()"),
            ("Foo::operator[](unsigned long)", "Foo::operator[]"),
            ("ns::operator<(ns::A const&, ns::A const&)", "ns::operator<"),
            ("ns::operator<<(std::ostream&, ns::A const&)", "ns::operator<<"),
            ("Ptr::operator->() const", "Ptr::operator->"),
            ("Foo::operator new(unsigned long)", "Foo::operator new"),
            ("(anonymous namespace)::helper(int)", "(anonymous namespace)::helper"),
            (
                "std::vector<int, std::allocator<int> >::push_back(int const&)",
                "std::vector<int, std::allocator<int> >::push_back",
            ),
            ("std::function<void (int)>::operator()(int) const", "std::function<void (int)>::operator()"),
            ("run()::{lambda(int)#1}::operator()(int) const", "run()::{lambda(int)#1}::operator()"),
            ("operator_helper(int)", "operator_helper"),
            ("myoperator()", "myoperator"),
        ] {
            assert_eq!(without_parameters(demangled), name, "{demangled}");
        }
    }
}
