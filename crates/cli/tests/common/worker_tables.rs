//! Reading dprobe's tables of the workers program (`workers.c`: four named threads call
//! `work(size)` known numbers of times and print what they did), to compare them with what the
//! program printed.

use std::collections::BTreeMap;

/// The rows of the table titled `title`: first column -> last column.
pub fn table(text: &str, title: &str) -> BTreeMap<String, u64> {
    let start = text.find(&format!("@{title}:\n")).unwrap_or_else(|| panic!("no {title} in:\n{text}"));
    let body = text[start..].lines().skip(2).take_while(|l| !l.trim().is_empty());
    body.map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[0].to_owned(), f[f.len() - 1].parse().unwrap())
    })
    .collect()
}

/// The sizes thread `name` passes to `work`, in order (see the fixture).
pub fn sizes_of(name: &str, calls: u64) -> impl Iterator<Item = i64> {
    let factor = 1 + "abcd".find(&name[..1]).unwrap() as i64;
    (1..=calls as i64).map(move |i| i * 7 * factor)
}

/// The buckets of its sizes that thread `name` printed: label -> calls.
pub fn printed_buckets(printed: &str, name: &str) -> BTreeMap<String, u64> {
    let prefix = format!("bucket {name} ");
    printed
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|l| {
            let (label, n) = l.rsplit_once(' ').unwrap();
            (label.to_owned(), n.parse().unwrap())
        })
        .collect()
}

/// The histogram titled `title` (`size of work [alpha]`): its line of figures (`count N, min
/// M, …`) and its buckets that are not empty, label -> calls.
pub fn histogram<'a>(text: &'a str, title: &str) -> (&'a str, BTreeMap<String, u64>) {
    let title = format!("@{title}:\n");
    let at = text.find(&title).unwrap_or_else(|| panic!("no {title} in:\n{text}"));
    let mut lines = text[at + title.len()..].lines();
    let figures = lines.next().unwrap();
    let buckets = lines
        .take_while(|l| l.starts_with('['))
        .map(|l| {
            let (label, rest) = l.split_once(')').unwrap_or_else(|| l.split_once(']').unwrap());
            (format!("{label})"), rest.split_whitespace().next().unwrap().parse().unwrap())
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    (figures, buckets)
}
