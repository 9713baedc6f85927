use super::*;
use dprobe_arch::MemoryFault;
use dprobe_spec::{parse_filter, parse_probe};

/// Memory from 0x1000 to 0x3000; the rest faults.
struct Fake(Vec<u8>);
impl Memory for Fake {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        let start = addr.0.checked_sub(0x1000).filter(|s| s + buf.len() as u64 <= self.0.len() as u64);
        let s = start.ok_or(MemoryFault { addr, len: buf.len(), write: false })? as usize;
        buf.copy_from_slice(&self.0[s..s + buf.len()]);
        Ok(())
    }
    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        Err(MemoryFault { addr, len: data.len(), write: true })
    }
}

/// Owned copies of the values, to compare.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Int(u64, ArgType),
    Str(Vec<u8>),
    Fault(u64),
}

fn owned(values: &Values) -> Vec<Owned> {
    values
        .iter()
        .map(|v| match v {
            Fetched::Int(x, ty) => Owned::Int(x, ty),
            Fetched::Str { bytes, .. } => Owned::Str(bytes.to_vec()),
            Fetched::Fault(a) => Owned::Fault(a),
        })
        .collect()
}

fn fetch_all(spec: &str, regs: &Regs, entry: Option<&Regs>, mem: &mut Fake) -> Values {
    let p = parse_probe(spec).unwrap();
    let plan = FetchPlan::compile(&p.args, None);
    let mut values = plan.values();
    let cx = FetchContext { regs, entry_regs: entry, comm: b"cat", errno_addr: Some(0x1100), file_base: Some(0x1000) };
    plan.evaluate(&cx, mem, &mut values);
    values
}

fn memory() -> Fake {
    let mut bytes = vec![0u8; 0x2000];
    bytes[0x10..0x1b].copy_from_slice(b"/etc/hosts\0");
    bytes[0x100..0x104].copy_from_slice(&(-2i32).to_le_bytes());
    bytes[0x200..0x208].copy_from_slice(&0x1010u64.to_le_bytes()); // a pointer to the string
    bytes[0x208..0x210].copy_from_slice(&7u64.to_le_bytes()); // stack: 7th argument
    bytes[0x1ffc..0x2000].copy_from_slice(b"end\0"); // a string ending at the mapping's end
    Fake(bytes)
}

#[test]
fn each_fetch_kind_reads_what_the_kernel_would() {
    let regs = Regs { rdi: 5, rsi: 0x1010, rdx: 0xffff_ff01, rsp: 0x1200, rax: (-2i64) as u64, ..Regs::default() };
    let got = fetch_all(
        "f a=$arg1:u32 p=+0($arg2):string lo=$arg3:x8 neg=$arg3:s8 e=$errno s=+0(+0(%sp)):string \
         seven=$arg7:u64 c=$comm bad=+0(\\16):u8 tail=@0x2ffc:u32 last=\\0x2ffc:string",
        &regs,
        None,
        &mut memory(),
    );
    let expected = vec![
        Owned::Int(5, ArgType::U(32)),
        Owned::Str(b"/etc/hosts".to_vec()),
        Owned::Int(1, ArgType::X(8)),
        Owned::Int(1, ArgType::S(8)),
        Owned::Int(0xffff_fffe, ArgType::S(32)),
        Owned::Str(b"/etc/hosts".to_vec()),
        Owned::Int(7, ArgType::U(64)),
        Owned::Str(b"cat".to_vec()),
        Owned::Fault(16),
        Owned::Int(u32::from_le_bytes(*b"end\0") as u64, ArgType::U(32)),
        Owned::Str(b"end".to_vec()),
    ];
    assert_eq!(owned(&got), expected);
    assert_eq!(got.get(4).unwrap().as_i64(), Some(-2), "errno is signed 32-bit");
}

#[test]
fn offsets_in_the_probed_file_are_read_from_where_the_file_is_and_fault_where_that_is_unknown() {
    let regs = Regs::default();
    let got = fetch_all("f n=@+0x100:s32 s=@+0x10:string p=+0(@+0x200):string", &regs, None, &mut memory());
    let expected = vec![
        Owned::Int(0xffff_fffe, ArgType::S(32)),
        Owned::Str(b"/etc/hosts".to_vec()),
        Owned::Str(b"/etc/hosts".to_vec()),
    ];
    assert_eq!(owned(&got), expected);
    let p = parse_probe("f n=@+0x100:s32").unwrap();
    let plan = FetchPlan::compile(&p.args, None);
    let mut values = plan.values();
    let cx = FetchContext { regs: &regs, entry_regs: None, comm: b"cat", errno_addr: None, file_base: None };
    plan.evaluate(&cx, &mut memory(), &mut values);
    assert_eq!(owned(&values), [Owned::Fault(0x100)], "no place known: a fault, never a read elsewhere");
}

#[test]
fn registers_by_their_kernel_names_and_arguments_from_the_entry_at_a_return() {
    let now = Regs { rax: 42, rbx: 1, rip: 0x4000, rflags: 0x246, r15: 9, rdi: 111, ..Regs::default() };
    let entry = Regs { rdi: 5, rsp: 0x1200, ..Regs::default() };
    let got = fetch_all(
        "f%return ax=%ax:u64 bx=%bx:u64 ip=%ip:x64 fl=%flags:x64 r15=%r15:u64 first=$arg1:u64 seven=$arg7:u64 \
         ret=$retval:s64",
        &now,
        Some(&entry),
        &mut memory(),
    );
    let ints: Vec<u64> = got.iter().map(|v| if let Fetched::Int(x, _) = v { x } else { u64::MAX }).collect();
    assert_eq!(ints, [42, 1, 0x4000, 0x246, 9, 5, 7, 42]);
}

#[test]
fn strings_stop_at_the_limit_and_faults_name_the_address() {
    let mut mem = Fake(vec![b'a'; 0x2000]);
    let got = fetch_all("f s=@0x1000:string t=@0x2f80:string", &Regs::default(), None, &mut mem);
    // The second runs off the end of memory without a NUL: it faults where reading failed.
    assert_eq!(owned(&got), vec![Owned::Str(vec![b'a'; MAX_STRING]), Owned::Fault(0x3000)]);
    assert!(matches!(got.get(0), Some(Fetched::Str { cut: true, .. })), "longer than the limit: cut");
    let got = fetch_all("f e=$errno", &Regs::default(), None, &mut Fake(vec![]));
    assert_eq!(owned(&got), vec![Owned::Fault(0x1100)]);
}

#[test]
fn a_string_exactly_at_the_limit_is_whole() {
    let mut exact = vec![b'a'; MAX_STRING];
    exact.push(0);
    let got = fetch_all("f s=@0x1000:string", &Regs::default(), None, &mut Fake(exact));
    assert_eq!(got.get(0), Some(Fetched::Str { bytes: &[b'a'; MAX_STRING], cut: false }));
    let got = fetch_all("f s=@0x1000:string", &Regs::default(), None, &mut Fake(vec![b'a'; MAX_STRING + 1]));
    assert!(matches!(got.get(0), Some(Fetched::Str { cut: true, .. })), "one more byte: cut");
}

#[test]
fn the_filter_reads_the_values_by_name_and_never_matches_an_unknown_field() {
    let p = parse_probe("f%return ret=$retval:s32 path=+0($arg1):string").unwrap();
    let plan = |text: &str| {
        let filter = parse_filter(text, &["ret", "path", "other"]).unwrap();
        FetchPlan::compile(&p.args, Some(&filter))
    };
    let mut values = Values::with_capacity(2);
    values.push_int(u32::MAX as u64, ArgType::S(32));
    values.push_str(b"/etc/hosts");
    assert!(plan("ret < 0 && path ~ \"/etc/*\"").passes(&values));
    assert!(!plan("ret >= 0 || path == \"/tmp\"").passes(&values));
    assert!(!plan("other == 0").passes(&values));
    assert!(plan("!(other == 0)").passes(&values));
    assert!(!plan("path < 3").passes(&values), "a string compared with a number");
    assert!(FetchPlan::compile(&p.args, None).passes(&values));
}

#[test]
fn errno_is_found_through_the_code_of_errno_location() {
    // endbr64; mov 0x100(%rip),%rax; add %fs:0,%rax; ret; the GOT entry holds -0x58.
    let mut bytes = vec![0u8; 0x2000];
    let code = [
        0xf3, 0x0f, 0x1e, 0xfa, /* endbr64 */
        0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00, /* mov 0x100(%rip),%rax */
        0x64, 0x48, 0x03, 0x04, 0x25, 0, 0, 0, 0,    /* add %fs:0,%rax */
        0xc3, /* ret */
    ];
    bytes[..code.len()].copy_from_slice(&code);
    bytes[0x10b..0x113].copy_from_slice(&(-0x58i64).to_le_bytes());
    let mut mem = Fake(bytes);
    assert_eq!(errno_tls_offset(&mut mem, Addr(0x1000)), Ok((-0x58i64) as u64));
    mem.0[4] = 0x90;
    assert_eq!(errno_tls_offset(&mut mem, Addr(0x1000)), Err(ErrnoError::UnknownCode));
    assert!(matches!(errno_tls_offset(&mut mem, Addr(0x10)), Err(ErrnoError::Unreadable(_))));
}
