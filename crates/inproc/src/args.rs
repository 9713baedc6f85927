//! Typed entry probes (the kernel's jprobes): a handler receives the probed function's
//! arguments as Rust values, decoded by the System V x86-64 calling convention: integers and
//! pointers in rdi, rsi, rdx, rcx, r8, r9, floating point in xmm0-7, the rest on the stack.

use dprobe_arch::Regs;

/// How the calling convention passes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgClass {
    /// General-purpose registers, then the stack.
    Integer,
    /// xmm registers, then the stack.
    Sse,
}

/// A type that can be passed as a scalar argument.
pub trait Arg: Copy {
    /// Where it travels.
    const CLASS: ArgClass;
    /// The value from the 64 bits of its register or stack slot.
    fn from_bits(bits: u64) -> Self;
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            const CLASS: ArgClass = ArgClass::Integer;
            fn from_bits(bits: u64) -> Self {
                // Truncation is the ABI: the callee sees the low bits.
                bits as $t
            }
        }
    )*};
}
int_arg!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl Arg for bool {
    const CLASS: ArgClass = ArgClass::Integer;
    fn from_bits(bits: u64) -> Self {
        bits as u8 != 0
    }
}

impl<T> Arg for *const T {
    const CLASS: ArgClass = ArgClass::Integer;
    fn from_bits(bits: u64) -> Self {
        bits as usize as *const T
    }
}

impl<T> Arg for *mut T {
    const CLASS: ArgClass = ArgClass::Integer;
    fn from_bits(bits: u64) -> Self {
        bits as usize as *mut T
    }
}

impl Arg for f64 {
    const CLASS: ArgClass = ArgClass::Sse;
    fn from_bits(bits: u64) -> Self {
        f64::from_bits(bits)
    }
}

impl Arg for f32 {
    const CLASS: ArgClass = ArgClass::Sse;
    fn from_bits(bits: u64) -> Self {
        f32::from_bits(bits as u32)
    }
}

/// Walks the argument locations in order.
pub struct ArgCursor<'a> {
    regs: &'a Regs,
    ints: usize,
    sses: usize,
    stack: usize,
}

impl<'a> ArgCursor<'a> {
    /// At a function's first instruction (the return address at `rsp`).
    pub fn new(regs: &'a Regs) -> Self {
        ArgCursor { regs, ints: 0, sses: 0, stack: 0 }
    }

    /// The next argument's 64 bits.
    pub fn next_bits(&mut self, class: ArgClass) -> u64 {
        match class {
            ArgClass::Integer if self.ints < 6 => {
                self.ints += 1;
                self.regs.int_arg(self.ints - 1).expect("six integer registers")
            }
            ArgClass::Sse if self.sses < 8 => {
                self.sses += 1;
                self.regs.xmm[self.sses - 1] as u64
            }
            _ => {
                self.stack += 1;
                stack_slot(self.regs.rsp, self.stack)
            }
        }
    }

    /// The next argument.
    pub fn next_arg<T: Arg>(&mut self) -> T {
        T::from_bits(self.next_bits(T::CLASS))
    }
}

/// The `n`-th (1-based) eight-byte stack argument at a function's entry.
fn stack_slot(rsp: u64, n: usize) -> u64 {
    let addr = rsp.wrapping_add(8 * n as u64);
    let mut b = [0u8; 8];
    // Arguments live in the caller's frame on the probed thread's own stack; a read that
    // fails (a caller that passed fewer arguments at the top of its stack) yields 0.
    match crate::sys::read_memory(dprobe_arch::Addr(addr), &mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => 0,
    }
}

/// A tuple of arguments decoded in order.
pub trait Args: Sized {
    /// Decode from the registers at the function's first instruction.
    fn decode(regs: &Regs) -> Self;
}

macro_rules! tuple_args {
    ($($name:ident),+) => {
        impl<$($name: Arg),+> Args for ($($name,)+) {
            fn decode(regs: &Regs) -> Self {
                let mut c = ArgCursor::new(regs);
                ($(c.next_arg::<$name>(),)+)
            }
        }
    };
}
tuple_args!(A);
tuple_args!(A, B);
tuple_args!(A, B, C);
tuple_args!(A, B, C, D);
tuple_args!(A, B, C, D, E);
tuple_args!(A, B, C, D, E, F);
tuple_args!(A, B, C, D, E, F, G);
tuple_args!(A, B, C, D, E, F, G, H);
tuple_args!(A, B, C, D, E, F, G, H, I);
tuple_args!(A, B, C, D, E, F, G, H, I, J);
tuple_args!(A, B, C, D, E, F, G, H, I, J, K);
tuple_args!(A, B, C, D, E, F, G, H, I, J, K, L);
