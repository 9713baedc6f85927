//! What the tracer and the agent say to each other over the control socket: length-prefixed
//! messages, the first byte saying which. The tracer asks to place a probe (its index, target,
//! side and fetch arguments), to filter its events, and to stop; the agent answers each. The
//! socket's end is the agent's signal to remove everything: the tracer is gone, however it
//! ended.

use std::io::{self, Read, Write};

use dprobe_core::returns::ReturnMode;
use dprobe_spec::{ArgType, Fetch, NamedArg, ProbeKind, Register};
use dprobe_sym::{IfuncChoice, Semaphore};

/// A probe to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceProbe {
    /// The probe's index: its events and counters carry it (the tracer's numbering, whatever
    /// the agent placed or refused before).
    pub index: u32,
    /// `[OBJECT:]FUNCTION` or a `0x` address.
    pub target: String,
    /// Bytes into the function.
    pub offset: u64,
    /// Entry or return.
    pub kind: ProbeKind,
    /// An entry probe timed to its return (delivered at the return with the entry's time).
    pub timed: bool,
    /// Returns pending at once; 0: the engine's default.
    pub maxactive: u64,
    /// Send events (a count needs none: the agent counts).
    pub events: bool,
    /// Each event carries the thread's registers and a copy of its stack, for the tracer to
    /// unwind.
    pub stack: bool,
    /// What to fetch.
    pub args: Vec<NamedArg>,
    /// A static probe's semaphore, raised by the agent wherever the probe is placed and
    /// lowered when it is removed.
    pub semaphore: Option<Semaphore>,
    /// Where the target is an indirect function: the implementation dprobe's own process
    /// chose, for a program that cannot tell yet (`dprobe_sym::IfuncChoice`).
    pub ifunc_choice: Option<IfuncChoice>,
}

/// The agent's answer to [`PlaceProbe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Placed at this address.
    At(u64),
    /// A return probe placed at this address, its returns watched as the mode says.
    Returns(u64, ReturnMode),
    /// Its object is not loaded.
    Waiting,
    /// Refused, with the reason.
    Failed(String),
}

/// A message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Tracer → agent.
    Place(PlaceProbe),
    /// Tracer → agent: place these probes, in order, answering each as [`Message::Place`] is
    /// answered. The first takes the first's index; each placed (or waiting) one the next,
    /// a refused one none (the tracer numbers them so as it reads the answers). Those the agent
    /// can place together, it places with one change of the program's code.
    PlaceMany(Vec<PlaceProbe>),
    /// Agent → tracer.
    Placed(Placement),
    /// Tracer → agent: test this filter (the tracer's syntax, naming only fields probe
    /// `index` fetches) in the probed thread, and send only the events that pass.
    Filter {
        /// The probe.
        index: u32,
        /// The filter's text.
        text: String,
    },
    /// Agent → tracer, before a [`Message::Placed`]: what the user should know about the
    /// probe (its semaphore could not be raised, and why).
    Note(String),
    /// Agent → tracer, before a [`Message::Placed`]: how the probe was placed, for the user
    /// who asked for details (its hits jump to a detour, or trap, and why).
    Detail(String),
    /// Agent → tracer: the filter is in place (or `false`: it could not be read, every
    /// event is sent).
    Filtered(bool),
    /// Tracer → agent: remove every probe.
    Stop,
    /// Agent → tracer: every probe is removed; no event comes after this.
    Stopped,
    /// A forked child's agent → tracer, first on its own connection: the child's process id.
    Hello(u32),
    /// Tracer → agent, before the probes: whether a forked child keeps them (`true`: it
    /// announces itself and is traced; `false`: its probes are removed as it starts).
    Children(bool),
    /// Tracer → agent, before it lets the program run: ask it before an `exec`
    /// (`exec_gate.rs`), so that it watches the thread for that alone.
    GateExec,
    /// Agent → tracer: whether it asks (`false`: the C library's `execve` cannot be probed;
    /// the tracer watches the program with ptrace all along).
    ExecGated(bool),
    /// Tracer → agent, once every probe is placed: enable the probes held off while the
    /// others were placed (`held_off.rs`).
    Arm,
    /// Agent → tracer: they are.
    Armed,
    /// Tracer → agent, first of all: what the tracer read of the program's object files
    /// (`dprobe_sym::export_objects`), for the agent to take over instead of reading them again.
    Objects(Vec<u8>),
}

const MAX_MESSAGE: u32 = 1 << 20;
/// The largest [`Message::Objects`] (the tracer leaves out what would not fit).
pub const MAX_OBJECTS: u32 = 64 << 20;
/// The most images of files sent before a [`Message::Objects`] (the C library and the loader,
/// and room to spare): descriptors of sealed memory files, with one byte, `I`.
pub const MAX_IMAGES: usize = 8;

/// Write one message.
pub fn send(w: &mut impl Write, m: &Message) -> io::Result<()> {
    // One write: a process that exits while its agent sends never leaves half a message
    // (a length without its body) for dprobe to read.
    w.write_all(&framed(m))
}

/// One message as it is written: its length, then its body.
pub fn framed(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    match m {
        Message::Place(p) => {
            b.push(b'P');
            put_place(&mut b, p);
        }
        Message::PlaceMany(probes) => {
            b.push(b'M');
            b.extend_from_slice(&(probes.len() as u32).to_le_bytes());
            for p in probes {
                put_place(&mut b, p);
            }
        }
        Message::Note(text) => {
            b.push(b'N');
            put_str(&mut b, text);
        }
        Message::Detail(text) => {
            b.push(b'D');
            put_str(&mut b, text);
        }
        Message::Filter { index, text } => {
            b.push(b'L');
            b.extend_from_slice(&index.to_le_bytes());
            put_str(&mut b, text);
        }
        Message::Filtered(ok) => b.extend_from_slice(&[b'l', *ok as u8]),
        Message::Placed(Placement::At(a)) => {
            b.push(b'A');
            b.extend_from_slice(&a.to_le_bytes());
        }
        Message::Placed(Placement::Returns(a, mode)) => {
            b.push(b'E');
            b.extend_from_slice(&a.to_le_bytes());
            match mode {
                ReturnMode::Exits { sites } => {
                    b.push(b'x');
                    b.extend_from_slice(&(*sites as u64).to_le_bytes());
                }
                ReturnMode::ReturnAddress { why } => {
                    b.push(b'r');
                    put_str(&mut b, why);
                }
            }
        }
        Message::Placed(Placement::Waiting) => b.push(b'W'),
        Message::Placed(Placement::Failed(why)) => {
            b.push(b'F');
            put_str(&mut b, why);
        }
        Message::Stop => b.push(b'S'),
        Message::Stopped => b.push(b's'),
        Message::Hello(pid) => {
            b.push(b'H');
            b.extend_from_slice(&pid.to_le_bytes());
        }
        Message::Children(follow) => b.extend_from_slice(&[b'C', *follow as u8]),
        Message::GateExec => b.push(b'G'),
        Message::ExecGated(gated) => b.extend_from_slice(&[b'g', *gated as u8]),
        Message::Arm => b.push(b'R'),
        Message::Armed => b.push(b'r'),
        Message::Objects(bytes) => {
            b.push(b'O');
            b.extend_from_slice(bytes);
        }
    }
    let mut framed = Vec::with_capacity(4 + b.len());
    framed.extend_from_slice(&(b.len() as u32).to_le_bytes());
    framed.extend_from_slice(&b);
    framed
}

/// Read one message; `None` at the end of the stream.
pub fn receive(r: &mut impl Read) -> io::Result<Option<Message>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    let mut kind = [0u8; 1];
    if len == 0 || len > MAX_OBJECTS {
        return Err(bad());
    }
    r.read_exact(&mut kind)?;
    if kind[0] == b'O' {
        let mut bytes = vec![0u8; len as usize - 1];
        r.read_exact(&mut bytes)?;
        return Ok(Some(Message::Objects(bytes)));
    }
    if len > MAX_MESSAGE {
        return Err(bad());
    }
    let mut body = vec![0u8; len as usize];
    body[0] = kind[0];
    r.read_exact(&mut body[1..])?;
    let mut c = Cursor(&body[1..]);
    let m = match body[0] {
        b'P' => Message::Place(c.place()?),
        b'M' => {
            let n = c.u32()?;
            // Each probe takes more than 30 bytes: a count the message cannot hold is refused
            // before anything is allocated for it.
            if n as usize > body.len() / 30 {
                return Err(bad());
            }
            Message::PlaceMany((0..n).map(|_| c.place()).collect::<io::Result<_>>()?)
        }
        b'N' => Message::Note(c.str()?),
        b'D' => Message::Detail(c.str()?),
        b'L' => Message::Filter { index: c.u32()?, text: c.str()? },
        b'l' => Message::Filtered(c.u8()? == 1),
        b'A' => Message::Placed(Placement::At(c.u64()?)),
        b'E' => {
            let at = c.u64()?;
            let mode = match c.u8()? {
                b'x' => ReturnMode::Exits { sites: c.u64()? as usize },
                _ => ReturnMode::ReturnAddress { why: c.str()? },
            };
            Message::Placed(Placement::Returns(at, mode))
        }
        b'W' => Message::Placed(Placement::Waiting),
        b'F' => Message::Placed(Placement::Failed(c.str()?)),
        b'S' => Message::Stop,
        b's' => Message::Stopped,
        b'H' => Message::Hello(c.u32()?),
        b'C' => Message::Children(c.u8()? == 1),
        b'G' => Message::GateExec,
        b'g' => Message::ExecGated(c.u8()? == 1),
        b'R' => Message::Arm,
        b'r' => Message::Armed,
        _ => return Err(bad()),
    };
    Ok(Some(m))
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "not a dprobe agent message")
}

/// One probe to place, as `Place` and `PlaceMany` carry it.
fn put_place(b: &mut Vec<u8>, p: &PlaceProbe) {
    b.extend_from_slice(&p.index.to_le_bytes());
    put_str(b, &p.target);
    b.extend_from_slice(&p.offset.to_le_bytes());
    b.push(matches!(p.kind, ProbeKind::Return) as u8);
    b.push(p.timed as u8);
    b.extend_from_slice(&p.maxactive.to_le_bytes());
    b.push(p.events as u8);
    b.push(p.stack as u8);
    b.extend_from_slice(&(p.args.len() as u32).to_le_bytes());
    for a in &p.args {
        put_str(b, &a.name);
        put_fetch(b, &a.fetch);
        put_type(b, a.ty);
        b.push(a.typed as u8);
    }
    match &p.semaphore {
        None => b.push(0),
        Some(s) => {
            b.push(1);
            put_str(b, &s.object);
            b.extend_from_slice(&s.addr.to_le_bytes());
            b.extend_from_slice(&s.file_offset.to_le_bytes());
        }
    }
    match &p.ifunc_choice {
        None => b.push(0),
        Some(c) => {
            b.push(1);
            for v in [c.device, c.inode, c.size, c.modified as u64, c.resolver, c.chosen] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_type(b: &mut Vec<u8>, ty: ArgType) {
    let (tag, bits) = match ty {
        ArgType::S(n) => (0, n),
        ArgType::U(n) => (1, n),
        ArgType::X(n) => (2, n),
        ArgType::String => (3, 0),
    };
    b.extend_from_slice(&[tag, bits]);
}

fn put_fetch(b: &mut Vec<u8>, f: &Fetch) {
    match f {
        Fetch::Reg(r) => {
            b.push(0);
            put_str(b, r.0);
        }
        Fetch::Arg(n) => {
            b.push(1);
            b.extend_from_slice(&n.to_le_bytes());
        }
        Fetch::RetVal => b.push(2),
        Fetch::Comm => b.push(3),
        Fetch::Errno => b.push(4),
        Fetch::Stack(n) => {
            b.push(5);
            b.extend_from_slice(&n.to_le_bytes());
        }
        Fetch::StackPointer => b.push(6),
        Fetch::Memory(a) => {
            b.push(7);
            b.extend_from_slice(&a.to_le_bytes());
        }
        Fetch::Immediate(i) => {
            b.push(8);
            b.extend_from_slice(&i.to_le_bytes());
        }
        Fetch::Deref { offset, inner } => {
            b.push(9);
            b.extend_from_slice(&offset.to_le_bytes());
            put_fetch(b, inner);
        }
        Fetch::Var { path } => {
            b.push(10);
            put_str(b, path);
        }
        Fetch::FileOffset(o) => {
            b.push(11);
            b.extend_from_slice(&o.to_le_bytes());
        }
    }
}

/// The register names the spec knows, as `'static` strings for [`Register`].
const REGISTERS: [&str; 19] = [
    "ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip", "flags", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15", "orig_ax",
];

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    /// One probe to place (see `put_place`).
    fn place(&mut self) -> io::Result<PlaceProbe> {
        let index = self.u32()?;
        let target = self.str()?;
        let offset = self.u64()?;
        let kind = if self.u8()? == 1 { ProbeKind::Return } else { ProbeKind::Entry };
        let timed = self.u8()? == 1;
        let maxactive = self.u64()?;
        let events = self.u8()? == 1;
        let stack = self.u8()? == 1;
        let n = self.u32()?;
        let mut args = Vec::new();
        for _ in 0..n.min(1024) {
            args.push(NamedArg { name: self.str()?, fetch: self.fetch(0)?, ty: self.ty()?, typed: self.u8()? == 1 });
        }
        let semaphore = match self.u8()? {
            0 => None,
            _ => Some(Semaphore { object: self.str()?, addr: self.u64()?, file_offset: self.u64()? }),
        };
        let ifunc_choice = match self.u8()? {
            0 => None,
            _ => Some(IfuncChoice {
                device: self.u64()?,
                inode: self.u64()?,
                size: self.u64()?,
                modified: self.u64()? as i64,
                resolver: self.u64()?,
                chosen: self.u64()?,
            }),
        };
        Ok(PlaceProbe { index, target, offset, kind, timed, maxactive, events, stack, args, semaphore, ifunc_choice })
    }

    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(bad());
        }
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(a)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> io::Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad())
    }
    fn ty(&mut self) -> io::Result<ArgType> {
        let (tag, bits) = (self.u8()?, self.u8()?);
        Ok(match tag {
            0 => ArgType::S(bits),
            1 => ArgType::U(bits),
            2 => ArgType::X(bits),
            3 => ArgType::String,
            _ => return Err(bad()),
        })
    }
    fn fetch(&mut self, depth: u32) -> io::Result<Fetch> {
        if depth > 16 {
            return Err(bad());
        }
        Ok(match self.u8()? {
            0 => {
                let name = self.str()?;
                Fetch::Reg(Register(REGISTERS.iter().find(|r| **r == name).ok_or_else(bad)?))
            }
            1 => Fetch::Arg(self.u32()?),
            2 => Fetch::RetVal,
            3 => Fetch::Comm,
            4 => Fetch::Errno,
            5 => Fetch::Stack(self.u32()?),
            6 => Fetch::StackPointer,
            7 => Fetch::Memory(self.u64()?),
            8 => Fetch::Immediate(self.u64()? as i64),
            9 => {
                let offset = self.u64()? as i64;
                Fetch::Deref { offset, inner: Box::new(self.fetch(depth + 1)?) }
            }
            10 => Fetch::Var { path: self.str()? },
            11 => Fetch::FileOffset(self.u64()?),
            _ => return Err(bad()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_written() {
        let spec =
            dprobe_spec::parse_probe("libc:openat path=+8(%si):string fl=$arg3:x32 r=%r12 e=$errno g=@+0x3010:s32")
                .unwrap();
        let first = PlaceProbe {
            index: 11,
            target: "libc:read".into(),
            offset: 0,
            kind: ProbeKind::Entry,
            timed: false,
            maxactive: 0,
            events: false,
            stack: false,
            args: Vec::new(),
            semaphore: None,
            ifunc_choice: None,
        };
        let second = PlaceProbe { target: "libc:write".into(), args: spec.args.clone(), ..first.clone() };
        let messages = [
            Message::PlaceMany(vec![first, second]),
            Message::PlaceMany(Vec::new()),
            Message::Place(PlaceProbe {
                index: 9,
                target: "libc:openat".into(),
                offset: 4,
                kind: ProbeKind::Return,
                timed: true,
                maxactive: 7,
                events: false,
                stack: true,
                args: spec.args.clone(),
                semaphore: None,
                ifunc_choice: Some(IfuncChoice {
                    device: 0xfe00,
                    inode: 326_279,
                    size: 1_922_136,
                    modified: -5,
                    resolver: 0x28e40,
                    chosen: 0x9d7c0,
                }),
            }),
            Message::Place(PlaceProbe {
                index: 10,
                target: "/opt/app:0x12b9".into(),
                offset: 0,
                kind: ProbeKind::Entry,
                timed: false,
                maxactive: 0,
                events: true,
                stack: false,
                args: spec.args,
                semaphore: Some(Semaphore { object: "/opt/app".into(), addr: 0x4048, file_offset: 0x3048 }),
                ifunc_choice: None,
            }),
            Message::Note("its semaphore is not set".into()),
            Message::Detail("jump-optimized (no trap)".into()),
            Message::Filter { index: 9, text: "fl == 0".into() },
            Message::Filtered(true),
            Message::Placed(Placement::At(0x1234)),
            Message::Placed(Placement::Waiting),
            Message::Placed(Placement::Returns(0x10, ReturnMode::Exits { sites: 3 })),
            Message::Placed(Placement::Returns(0x20, ReturnMode::ReturnAddress { why: "asked for".into() })),
            Message::Placed(Placement::Failed("why".into())),
            Message::Stop,
            Message::Stopped,
            Message::Hello(77),
            Message::GateExec,
            Message::ExecGated(true),
            Message::ExecGated(false),
            Message::Arm,
            Message::Armed,
            Message::Objects(vec![7; 3 << 20]),
            Message::Objects(Vec::new()),
        ];
        let mut buf = Vec::new();
        for m in &messages {
            send(&mut buf, m).unwrap();
        }
        let mut r = &buf[..];
        for m in &messages {
            assert_eq!(receive(&mut r).unwrap().as_ref(), Some(m));
        }
        assert_eq!(receive(&mut r).unwrap(), None);
        assert!(receive(&mut &[1u8, 0, 0, 0, b'?'][..]).is_err(), "an unknown message is an error");
        let too_many = [5u8, 0, 0, 0, b'M', 0xff, 0xff, 0xff, 0x7f];
        assert!(receive(&mut &too_many[..]).is_err(), "more probes than the message holds");
        let long_place = [0u8, 0, 0x20, 0, b'P'];
        assert!(receive(&mut &long_place[..]).is_err(), "only the objects may be longer than 1 MiB");
    }
}
