//! An instruction's text in a message, formatted only when the message is shown.
//!
//! The formatter builds its tables the first time it formats, in each process: about 2 ms
//! here. Most refusals are never shown (a window the engine leaves on `int3` and says why only
//! to `-v` or `dprobe list`), yet every program the agent is loaded into refused one on its
//! start (the C library's `execve` has a jump before its first `ret`), and paid for the
//! tables. The text is kept as the instruction's bytes and address until it is displayed.

use std::fmt;

use crate::analyze::describe;
use crate::Addr;

/// The text of the instruction at an address, in AT&T syntax (see [`describe`]).
#[derive(Clone)]
pub struct InsnText(Text);

#[derive(Clone)]
enum Text {
    /// The instruction's bytes (at most 15, the longest), decoded when shown.
    Code { bytes: [u8; 15], len: u8, addr: Addr },
    /// Text written out already.
    Written(String),
}

impl InsnText {
    /// The instruction that begins `bytes`, at `addr`.
    pub fn of(bytes: &[u8], addr: Addr) -> InsnText {
        let len = bytes.len().min(15);
        let mut kept = [0u8; 15];
        kept[..len].copy_from_slice(&bytes[..len]);
        InsnText(Text::Code { bytes: kept, len: len as u8, addr })
    }
}

impl fmt::Display for InsnText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Text::Code { bytes, len, addr } => f.write_str(&describe(&bytes[..usize::from(*len)], *addr)),
            Text::Written(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for InsnText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// Two texts are equal when they read the same.
impl PartialEq for InsnText {
    fn eq(&self, other: &InsnText) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for InsnText {}

impl From<&str> for InsnText {
    fn from(text: &str) -> InsnText {
        InsnText(Text::Written(text.to_owned()))
    }
}

impl From<String> for InsnText {
    fn from(text: String) -> InsnText {
        InsnText(Text::Written(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_as_the_instruction_formatted_at_once() {
        let jae = [0x73, 0x01, 0xc3];
        let text = InsnText::of(&jae, Addr(0x1000));
        assert_eq!(text.to_string(), describe(&jae, Addr(0x1000)));
        assert_eq!(text.to_string(), "jae 0x0000000000001003");
        assert_eq!(format!("{text:?}"), "\"jae 0x0000000000001003\"");
        assert_eq!(text, InsnText::from("jae 0x0000000000001003"));
        assert_ne!(text, InsnText::from("ret"));
        // More bytes than an instruction holds: the first 15 are kept.
        let bad = [0x06u8; 20];
        assert_eq!(InsnText::of(&bad, Addr(0)).to_string(), describe(&bad, Addr(0)));
    }
}
