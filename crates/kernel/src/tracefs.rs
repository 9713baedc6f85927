//! tracefs: where it is (mounted if it is not), and the few files dprobe writes: the
//! dynamic-event definitions of its own group. Nothing global (`tracing_on`, the trace
//! buffer, `current_tracer`, other groups' events) is ever changed.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::KernelError;
use crate::format::EventFormat;

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Find tracefs, mounting it on `/sys/kernel/tracing` when it is not mounted.
    pub fn open() -> Result<Tracefs, KernelError> {
        for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            match std::fs::metadata(Path::new(root).join("events")) {
                Ok(m) if m.is_dir() => return Ok(Tracefs { root: root.into() }),
                // Mounted, but closed to this user (tracefs is mode 0700 by default).
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(KernelError::Permission(format!(
                        "tracefs is mounted on {root} but only root may use it: the kernel engine needs root \
                         (CAP_SYS_ADMIN and CAP_PERFMON)"
                    )))
                }
                _ => {}
            }
        }
        mount("/sys/kernel/tracing")?;
        Ok(Tracefs { root: "/sys/kernel/tracing".into() })
    }

    /// A file or directory under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Whether the kernel has this dynamic-event file (`kprobe_events`, `uprobe_events`).
    pub fn has(&self, file: &str) -> bool {
        self.path(file).exists()
    }

    /// Append one definition line to `file` (`uprobe_events`, `kprobe_events`). A refusal
    /// carries the kernel's own explanation from `error_log`.
    pub fn define(&self, file: &str, line: &str) -> Result<(), KernelError> {
        let path = self.path(file);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| self.open_error(&path, e))?;
        f.write_all(format!("{line}\n").as_bytes()).map_err(|e| KernelError::Refused {
            definition: line.to_owned(),
            reason: self.last_error().unwrap_or_else(|| e.to_string()),
        })
    }

    /// Append definition lines to `file` in one write: the kernel takes them in order and
    /// stops at the first it refuses (those before it stay defined). A refusal names the
    /// line refused and carries the kernel's explanation.
    pub fn define_all(&self, file: &str, lines: &[String]) -> Result<(), KernelError> {
        let path = self.path(file);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| self.open_error(&path, e))?;
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        f.write_all(text.as_bytes()).map_err(|e| {
            let reason = self.last_error().unwrap_or_else(|| e.to_string());
            // The kernel's log quotes the command it refused.
            let definition = lines
                .iter()
                .find(|l| self.last_command().is_some_and(|c| c.trim() == l.trim()))
                .or(lines.first().filter(|_| lines.len() == 1))
                .cloned()
                .unwrap_or_else(|| format!("{} definitions", lines.len()));
            KernelError::Refused { definition, reason }
        })
    }

    /// The format of event `group/name`.
    pub fn format(&self, group: &str, name: &str) -> Result<EventFormat, KernelError> {
        let path = self.path(&format!("events/{group}/{name}/format"));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                KernelError::NotFound {
                    what: format!("event `{group}:{name}`"),
                    why: "the kernel has no such event".into(),
                }
            } else {
                self.open_error(&path, e)
            }
        })?;
        EventFormat::parse(&text).map_err(|e| KernelError::os(path.display().to_string(), std::io::Error::other(e)))
    }

    /// Lines of `file`, or nothing when it is missing.
    pub fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(file)).map(|t| t.lines().map(str::to_owned).collect()).unwrap_or_default()
    }

    /// The last message of `error_log`, without its timestamp.
    fn last_error(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.path("error_log")).ok()?;
        let lines: Vec<&str> = log.lines().collect();
        let i = lines.iter().rposition(|l| l.contains("error:"))?;
        let message = lines[i].split_once("error:").map(|(_, m)| m.trim().to_owned())?;
        Some(message)
    }

    /// The command quoted under the last message of `error_log` (`  Command: p:...`).
    fn last_command(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.path("error_log")).ok()?;
        let line = log.lines().rev().find(|l| l.trim_start().starts_with("Command:"))?;
        Some(line.trim_start().trim_start_matches("Command:").trim().to_owned())
    }

    fn open_error(&self, path: &Path, e: std::io::Error) -> KernelError {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            KernelError::Permission(format!(
                "cannot write {}: the kernel engine needs root (CAP_SYS_ADMIN and CAP_PERFMON)",
                path.display()
            ))
        } else {
            KernelError::os(format!("{}", path.display()), e)
        }
    }
}

fn mount(at: &str) -> Result<(), KernelError> {
    let target = std::ffi::CString::new(at).expect("no NUL");
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let r = unsafe { libc::mount(c"nodev".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EPERM) => {
            KernelError::Permission(format!("tracefs is not mounted and mounting it on {at} needs root"))
        }
        Some(libc::ENODEV) => KernelError::Unsupported {
            what: "tracefs".into(),
            why: "this kernel has no tracing support (CONFIG_TRACING)".into(),
        },
        _ => KernelError::os(format!("mounting tracefs on {at}"), e),
    })
}
