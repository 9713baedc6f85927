//! A value fetched from memory the program cannot read (a page it made `PROT_NONE`) is a
//! fault with every engine, as the kernel's uprobes show it, not the bytes a tracer could read
//! through the protection; the same string on a readable page is read.
mod common;

use common::{c_program_from, trace_to_file};

const SOURCE: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
__attribute__((noinline)) int take(const char *s, int n) { __asm__ volatile(""); return n; }
int main(void) {
    char *hidden = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *shown = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(hidden, "secret");
    strcpy(shown, "visible");
    mprotect(hidden, 4096, PROT_NONE);
    int sum = 0;
    for (int i = 0; i < 3; i++) sum += take(hidden, i) + take(shown, i);
    printf("sum %d\n", sum);
    return 0;
}
"#;

#[test]
fn a_string_on_a_page_the_program_cannot_read_is_a_fault_with_every_engine() {
    let program = c_program_from("unreadable-page", SOURCE, &["-O1"]);
    let probe = format!("{}:take s=+0(%di):string n=%si", program.rsplit_once('/').unwrap().1);
    for engine in ["agent", "ptrace"] {
        let t = trace_to_file(&format!("unreadable-page-{engine}"), &["--engine", engine, &probe, "--", program]);
        let out = &t.trace;
        assert_eq!((t.code, t.stdout.as_str()), (Some(0), "sum 6\n"), "{}", t.what(engine));
        assert_eq!(out.matches("call take(s=(fault), n=").count(), 3, "{engine}\n{out}");
        assert_eq!(out.matches("call take(s=\"visible\", n=").count(), 3, "{engine}\n{out}");
        assert!(!out.contains("secret"), "{engine}: read through the protection\n{out}");
    }
}
