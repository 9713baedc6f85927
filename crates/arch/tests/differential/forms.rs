//! Harvesting instruction forms from real code, and normalizing each to run in the harness.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Command;

use iced_x86::{Decoder, DecoderOptions, Encoder, Formatter, GasFormatter, Instruction, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

use crate::harness::Ctx;
use crate::{Arena, REGION};

/// One instruction, the first seen of its form.
pub struct Form {
    pub bytes: Vec<u8>,
    pub ip: u64,
    pub source: String,
    pub text: String,
}

/// Consecutive instructions as a compiler laid them out, the first seen of its forms.
pub struct Run {
    /// Each instruction's bytes and address.
    pub insns: Vec<(Vec<u8>, u64)>,
    pub source: String,
    pub text: String,
}

/// Every distinct form and run, and where they came from.
pub struct Catalog {
    pub forms: Vec<Form>,
    pub runs: Vec<Run>,
    pub sources: Vec<String>,
}

/// A form ready to run at the test address.
pub struct Prepared {
    pub bytes: Vec<u8>,
    pub ctx: Ctx,
    /// Why the harness cannot run it deterministically (not a refusal by dprobe).
    pub not_runnable: Option<&'static str>,
}

/// What makes two instructions "the same form": the opcode and operand shapes, how the
/// memory operand is addressed, and the prefixes that change behaviour.
fn form_key(i: &Instruction) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (i.code() as u32).hash(&mut h);
    for n in 0..i.op_count() {
        (i.op_kind(n) as u8).hash(&mut h);
        if i.op_kind(n) == OpKind::Register {
            (i.op_register(n).full_register() == Register::RSP).hash(&mut h);
        }
    }
    if i.op_kinds().any(|k| k == OpKind::Memory) {
        let base = match i.memory_base() {
            Register::None => 0u8,
            Register::RIP | Register::EIP => 1,
            r if r.full_register() == Register::RSP => 2,
            r if r.full_register() == Register::RBP => 3,
            _ => 4,
        };
        (base, i.memory_index() != Register::None, i.segment_prefix()).hash(&mut h);
    }
    (i.has_lock_prefix(), i.has_rep_prefix(), i.has_repne_prefix()).hash(&mut h);
    h.finish()
}

struct Harvester {
    seen: HashSet<u64>,
    forms: Vec<Form>,
    seen_runs: HashSet<u64>,
    runs: Vec<Run>,
    sources: Vec<String>,
}

/// The longest run a jump-optimized probe displaces that the test harvests.
const LONGEST_RUN: usize = 4;

impl Harvester {
    /// Harvest the forms of `code`, and its runs: every run when `entries` is `None`, else
    /// the runs starting at those addresses (function entries).
    fn add_code(&mut self, source: &str, code: &[u8], ip: u64, entries: Option<&HashSet<u64>>) {
        let before = self.forms.len();
        let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
        let mut instr = Instruction::default();
        let mut fmt = GasFormatter::new();
        let mut window: Vec<(u64, usize, Instruction)> = Vec::new();
        while d.can_decode() {
            let at = d.position();
            d.decode_out(&mut instr);
            if instr.is_invalid() {
                window.clear();
                continue;
            }
            window.push((form_key(&instr), at, instr));
            if window.len() > LONGEST_RUN {
                window.remove(0);
            }
            for n in 2..=window.len() {
                let run = &window[window.len() - n..];
                if entries.is_some_and(|e| !e.contains(&run[0].2.ip())) {
                    continue;
                }
                let mut h = std::collections::hash_map::DefaultHasher::new();
                run.iter().for_each(|(key, _, _)| key.hash(&mut h));
                if self.seen_runs.insert(h.finish()) {
                    let mut text = Vec::new();
                    for (_, _, i) in run {
                        let mut t = String::new();
                        fmt.format(i, &mut t);
                        text.push(t);
                    }
                    self.runs.push(Run {
                        insns: run.iter().map(|(_, at, i)| (code[*at..*at + i.len()].to_vec(), i.ip())).collect(),
                        source: source.into(),
                        text: text.join("; "),
                    });
                }
            }
            if self.seen.insert(form_key(&instr)) {
                let mut text = String::new();
                fmt.format(&instr, &mut text);
                self.forms.push(Form {
                    bytes: code[at..at + instr.len()].to_vec(),
                    ip: instr.ip(),
                    source: source.into(),
                    text,
                });
            }
        }
        self.sources.push(format!("{source}: {} new", self.forms.len() - before));
    }

    /// Harvest an object's code; `all_runs`: every run, else only those at function entries.
    fn add_object(&mut self, source: &str, data: &[u8], all_runs: bool) {
        let Ok(file) = object::File::parse(data) else { return };
        let entries: HashSet<u64> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Text)
            .map(|s| s.address())
            .collect();
        let mut merged = Vec::new();
        for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
            if let Ok(bytes) = section.data() {
                merged.push((section.address(), bytes.to_vec()));
            }
        }
        let before = self.forms.len();
        let sources_before = self.sources.len();
        for (addr, bytes) in merged {
            self.add_code(source, &bytes, addr, (!all_runs).then_some(&entries));
        }
        self.sources.truncate(sources_before);
        self.sources.push(format!("{source}: {} new", self.forms.len() - before));
    }
}

fn compile(compiler: &str, flags: &[&str], out_dir: &Path, harvester: &mut Harvester) {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/differential/workload.c");
    let out = out_dir.join(format!("{}{}.o", compiler, flags.join("").replace(['-', '='], "_")));
    let ok = Command::new(compiler).args(flags).args(["-c", src, "-o"]).arg(&out).status().is_ok_and(|s| s.success());
    if !ok {
        harvester.sources.push(format!("{compiler} {}: not available", flags.join(" ")));
        return;
    }
    let data = std::fs::read(&out).expect("compiled object");
    harvester.add_object(&format!("{compiler} {}", flags.join(" ")), &data, true);
}

fn loaded_object(needle: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains(needle)).map(str::to_owned)
}

/// Hand-picked forms that compilers rarely emit in a small sample: RIP-relative SSE/AVX,
/// string instructions, `lock`, `xchg`, `fs:`/`gs:`, and every kind of branch.
const HAND_PICKED: &[&[u8]] = &[
    &[0x0f, 0x28, 0x05, 0, 0, 0, 0],                         // movaps 0(%rip),%xmm0
    &[0x66, 0x0f, 0x6f, 0x0d, 0, 0, 0, 0],                   // movdqa 0(%rip),%xmm1
    &[0xf2, 0x0f, 0x10, 0x15, 0, 0, 0, 0],                   // movsd 0(%rip),%xmm2
    &[0xf3, 0x0f, 0x11, 0x1d, 0, 0, 0, 0],                   // movss %xmm3,0(%rip)
    &[0xc5, 0xfe, 0x6f, 0x05, 0, 0, 0, 0],                   // vmovdqu 0(%rip),%ymm0
    &[0xc5, 0xf9, 0x58, 0x05, 0, 0, 0, 0],                   // vaddpd 0(%rip),%xmm0,%xmm0
    &[0xc4, 0xe2, 0x79, 0x18, 0x05, 0, 0, 0, 0],             // vbroadcastss 0(%rip),%xmm0
    &[0x62, 0xf1, 0xfe, 0x48, 0x6f, 0x05, 0, 0, 0, 0],       // vmovdqu64 0(%rip),%zmm0
    &[0x66, 0x0f, 0x3a, 0x0f, 0x05, 0, 0, 0, 0, 0x04],       // palignr $4,0(%rip),%xmm0 (imm after disp)
    &[0x48, 0x81, 0x05, 0, 0, 0, 0, 0x78, 0x56, 0x34, 0x12], // addq $0x12345678,0(%rip)
    &[0x80, 0x3d, 0, 0, 0, 0, 0x7f],                         // cmpb $0x7f,0(%rip)
    &[0x48, 0x8d, 0x05, 0, 0, 0, 0],                         // lea 0(%rip),%rax
    &[0x48, 0x8b, 0x05, 0, 0, 0, 0],                         // mov 0(%rip),%rax
    &[0x4c, 0x8b, 0x3d, 0, 0, 0, 0],                         // mov 0(%rip),%r15
    &[0xff, 0x35, 0, 0, 0, 0],                               // push 0(%rip)
    &[0x8f, 0x05, 0, 0, 0, 0],                               // pop 0(%rip)
    &[0xf0, 0x48, 0x0f, 0xb1, 0x0d, 0, 0, 0, 0],             // lock cmpxchg %rcx,0(%rip)
    &[0xf0, 0x48, 0x0f, 0xc7, 0x0d, 0, 0, 0, 0],             // lock cmpxchg16b 0(%rip)
    &[0xf0, 0xff, 0x05, 0, 0, 0, 0],                         // lock incl 0(%rip)
    &[0xf0, 0x48, 0x0f, 0xc1, 0x07],                         // lock xadd %rax,(%rdi)
    &[0xf0, 0x01, 0x07],                                     // lock add %eax,(%rdi)
    &[0x48, 0x87, 0x07],                                     // xchg %rax,(%rdi)
    &[0x48, 0x87, 0x05, 0, 0, 0, 0],                         // xchg %rax,0(%rip)
    &[0x48, 0x93],                                           // xchg %rax,%rbx
    &[0xf3, 0xa4],                                           // rep movsb
    &[0xf3, 0x48, 0xab],                                     // rep stos %rax,(%rdi)
    &[0xf3, 0xa6],                                           // repz cmpsb
    &[0xf2, 0xae],                                           // repnz scasb
    &[0x48, 0xad],                                           // lods (%rsi),%rax
    &[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0],          // mov %fs:0x28,%rax
    &[0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0],             // mov %fs:0,%rax
    &[0x65, 0x48, 0x8b, 0x07],                               // mov %gs:(%rdi),%rax
    &[0x64, 0x48, 0x8b, 0x05, 0, 0, 0, 0],                   // mov %fs:0(%rip),%rax
    &[0xeb, 0x10],                                           // jmp rel8
    &[0xe9, 0, 1, 0, 0],                                     // jmp rel32
    &[0x70, 0x10],
    &[0x71, 0x10],
    &[0x72, 0x10],
    &[0x73, 0x10],
    &[0x74, 0x10],
    &[0x75, 0x10],
    &[0x76, 0x10],
    &[0x77, 0x10],
    &[0x78, 0x10],
    &[0x79, 0x10],
    &[0x7a, 0x10],
    &[0x7b, 0x10],
    &[0x7c, 0x10],
    &[0x7d, 0x10],
    &[0x7e, 0x10],
    &[0x7f, 0x10],
    &[0x0f, 0x84, 0, 1, 0, 0], // je rel32
    &[0x0f, 0x8f, 0, 1, 0, 0], // jg rel32
    &[0xe2, 0x10],
    &[0xe1, 0x10],
    &[0xe0, 0x10],       // loop, loope, loopne
    &[0xe3, 0x10],       // jrcxz
    &[0xe8, 0, 1, 0, 0], // call rel32
    &[0xff, 0xd0],
    &[0x41, 0xff, 0xd3], // call *%rax, call *%r11
    &[0xff, 0xe1],
    &[0x41, 0xff, 0xe7], // jmp *%rcx, jmp *%r15
    &[0xff, 0x15, 0, 0, 0, 0],
    &[0xff, 0x25, 0, 0, 0, 0], // call/jmp *0(%rip)
    &[0xff, 0x14, 0xc7],       // call *(%rdi,%rax,8)
    &[0xff, 0x54, 0x24, 0x08], // call *8(%rsp)
    &[0xff, 0x66, 0x10],       // jmp *0x10(%rsi)
    &[0x3e, 0xff, 0xe0],       // notrack jmp *%rax
    &[0xf2, 0xff, 0xe0],       // bnd jmp *%rax
    &[0xc3],
    &[0xc2, 0x10, 0x00],
    &[0xf3, 0xc3], // ret, ret $16, repz ret
    &[0x55],
    &[0x41, 0x57],
    &[0x54],
    &[0x6a, 0x80],
    &[0x68, 0x78, 0x56, 0x34, 0x12], // push rbp/r15/rsp, push imm8/imm32
    &[0x66, 0x50],                   // push %ax (16-bit: copied, not emulated)
    &[0xf3, 0x0f, 0x1e, 0xfa],       // endbr64
    &[0xc8, 0x10, 0x00, 0x00],
    &[0xc9],             // enter $16,$0; leave
    &[0x9c],             // pushf
    &[0x48, 0xf7, 0xf1], // div %rcx
];

/// Every form, from compilers, libc, this binary, and the hand-picked list.
pub fn harvest() -> Catalog {
    let mut h = Harvester {
        seen: HashSet::new(),
        forms: Vec::new(),
        seen_runs: HashSet::new(),
        runs: Vec::new(),
        sources: Vec::new(),
    };
    for (i, bytes) in HAND_PICKED.iter().enumerate() {
        let before = h.sources.len();
        h.add_code("hand-picked", bytes, 0x10_0000 + (i as u64) * 0x100, None);
        h.sources.truncate(before);
    }
    h.sources.push(format!("hand-picked: {}", h.forms.len()));
    let dir = std::env::temp_dir().join(format!("dprobe-differential-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    for flags in [&["-O0"][..], &["-O1"], &["-O2"], &["-O3"], &["-O3", "-march=native"], &["-O2", "-fPIC"]] {
        compile(&cc, flags, &dir, &mut h);
    }
    if Command::new("clang").arg("--version").output().is_ok() {
        for flags in [&["-O0"][..], &["-O1"], &["-O2"], &["-O3"], &["-O3", "-march=native"]] {
            compile("clang", flags, &dir, &mut h);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(libc) = loaded_object("libc.so") {
        h.add_object("libc", &std::fs::read(libc).expect("libc"), false);
    }
    h.add_object("this test binary (LLVM)", &std::fs::read("/proc/self/exe").expect("own binary"), false);
    Catalog { forms: h.forms, runs: h.runs, sources: h.sources }
}

/// Why a form cannot run deterministically in the harness.
fn not_runnable(i: &Instruction) -> Option<&'static str> {
    use Mnemonic::*;
    match i.mnemonic() {
        Rdtsc | Rdtscp | Rdrand | Rdseed | Rdpid | Rdpmc => Some("reads a value that changes between runs"),
        Wrfsbase | Wrgsbase | Wrpkru => Some("changes thread state the harness runs on"),
        Umwait | Tpause | Umonitor => Some("waits"),
        Popf | Popfd | Popfq => Some("loads the trap flag from test data"),
        Xsave | Xsavec | Xsaveopt | Xsaves | Xsave64 | Xsavec64 | Xsaveopt64 | Xsaves64 | Xrstor | Xrstor64
        | Xrstors | Xrstors64 | Fxsave | Fxsave64 | Fxrstor | Fxrstor64 => {
            Some("saves or restores state the harness does not control")
        }
        _ => {
            // Thread-local storage is test data: the harness runs code with the thread
            // pointer in the arena (see `harness`).
            let segment =
                (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n).is_segment_register());
            segment.then_some("reads or writes a segment register")
        }
    }
}

/// Re-encode `form` at `at` with its memory operand and branch target inside the arena, and
/// the register state that makes its memory operand valid.
pub fn normalize(form: &Form, at: u64, arena: &Arena) -> Option<Prepared> {
    let (bytes, i) = retarget(&form.bytes, form.ip, at, at + 0x100, arena)?;
    let mut ctx = initial_ctx(arena);
    point_memory_at_data(&i, &mut ctx, arena);
    Some(Prepared { bytes, ctx, not_runnable: not_runnable(&i) })
}

/// Re-encode `run` at `at`, instruction after instruction, as [`normalize`] does one: every
/// memory operand into data, branches past the run's end but within rel8 reach of each of its
/// instructions (short branches are what compilers emit most).
pub fn normalize_run(run: &Run, at: u64, arena: &Arena) -> Option<Prepared> {
    let mut ctx = initial_ctx(arena);
    let mut bytes = Vec::new();
    let mut why = None;
    for (code, ip) in &run.insns {
        let (encoded, i) = retarget(code, *ip, at + bytes.len() as u64, at + RUN_BRANCH_TARGET, arena)?;
        point_memory_at_data(&i, &mut ctx, arena);
        why = why.or(not_runnable(&i));
        bytes.extend(encoded);
    }
    Some(Prepared { bytes, ctx, not_runnable: why })
}

/// Where a run's branches go, from its start: after the longest run (4 x 15 bytes).
const RUN_BRANCH_TARGET: u64 = 0x60;

/// The instruction `code` (from `ip`) encoded at `here`: a RIP-relative operand refers to
/// data, a branch to `target`.
fn retarget(code: &[u8], ip: u64, here: u64, target: u64, arena: &Arena) -> Option<(Vec<u8>, Instruction)> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut i = d.decode();
    let data_mid = arena.data + (REGION / 2) as u64;
    if i.is_ip_rel_memory_operand() {
        i.set_memory_displacement64(data_mid + 0x40);
    }
    if i.op_kinds().any(|k| k == OpKind::NearBranch64) {
        i.set_near_branch64(target);
    }
    let mut enc = Encoder::new(64);
    enc.encode(&i, here).ok()?;
    let bytes = enc.take_buffer();
    let again = Decoder::with_ip(64, &bytes, here, DecoderOptions::NONE).decode();
    if again.code() != i.code() {
        return None;
    }
    Some((bytes, again))
}

/// Registers pointing at int3s in the code area, a small count in rcx, string pointers and
/// the stack in their areas, distinct xmm values, and the thread pointer in data.
fn initial_ctx(arena: &Arena) -> Ctx {
    let data_mid = arena.data + (REGION / 2) as u64;
    let stack_mid = arena.stack + (REGION / 2) as u64;
    let int3_area = arena.code + 0x2000;
    // The thread block in the data's first half, so that the negative offsets of static TLS
    // and glibc's positive `struct pthread` offsets all land in compared memory.
    let fs_base = arena.data + (REGION / 4) as u64;
    let mut ctx = Ctx { gpr: [0; 16], rflags: 0x247, avx512: 0, xmm: [0; 16], fs_base };
    for (n, g) in ctx.gpr.iter_mut().enumerate() {
        *g = int3_area + 0x800 + n as u64 * 8;
    }
    ctx.gpr[1] = 5; // rcx: a small count for rep, loop and shifts
    ctx.gpr[6] = data_mid + 0x100; // rsi, rdi: string sources and destinations in data
    ctx.gpr[7] = data_mid + 0x200;
    ctx.gpr[4] = stack_mid;
    for (n, x) in ctx.xmm.iter_mut().enumerate() {
        *x = 0x0102_0304_0506_0708_1112_1314_1516_1718u128.wrapping_mul(n as u128 + 3);
    }
    ctx
}

/// Make `i`'s memory operand valid: its base points into data, its index is small.
fn point_memory_at_data(i: &Instruction, ctx: &mut Ctx, arena: &Arena) {
    let data_mid = arena.data + (REGION / 2) as u64;
    let index_of = |r: Register| -> Option<usize> {
        let full = r.full_register();
        (full.is_gpr64()).then(|| full.number())
    };
    if i.op_kinds().any(|k| k == OpKind::Memory) && !i.is_ip_rel_memory_operand() {
        if let Some(b) = index_of(i.memory_base()) {
            if b != 4 {
                ctx.gpr[b] = data_mid;
            }
        }
        if let Some(x) = index_of(i.memory_index()) {
            ctx.gpr[x] = 2;
        }
    }
}
